"""Collection for the whole repository: Keras needs its backend chosen before it is first imported.

The doctests of ``convspectra.keras`` import Keras in the test process; torch is always installed
with the test extra, so it is the backend unless ``KERAS_BACKEND`` says otherwise. Without Keras the
``convspectra.keras`` modules' doctests are not collected (tests/test_keras*.py skip with the reason).
"""

import importlib.util
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

collect_ignore_glob = [] if importlib.util.find_spec("keras") else ["src/convspectra/keras/*.py"]
