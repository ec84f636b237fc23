"""The one input-size recorder (convspectra.nn.recording): a refused size leaves the hook in place, and a
deep copy made before the first forward pass records into the copy only, in either order of first use."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from convspectra.errors import ParameterError
from convspectra.nn import OperatorNormProjector, register_operator_norm_constraint
from convspectra.nn.recording import InputSizeRecorder


class Record:
    input_shape: tuple[int, ...] | None = None


def test_refused_sizes_keep_the_hook_until_a_valid_one_comes():
    conv, record, recorder = nn.Conv2d(1, 1, 3, stride=2), Record(), InputSizeRecorder()
    recorder.record_first(record, conv, label="c")
    for odd in (7, 9):
        with pytest.raises(ParameterError, match=rf"layer 'c' has stride \(2, 2\).*\({odd}, {odd}\)"):
            conv(torch.zeros(1, 1, odd, odd))
        assert record.input_shape is None and recorder.pending == 1 and len(conv._forward_pre_hooks) == 1
    conv(torch.zeros(1, 1, 10, 10))
    assert record.input_shape == (10, 10) and recorder.pending == 0 and len(conv._forward_pre_hooks) == 0
    conv(torch.zeros(1, 1, 12, 12))  # the first valid size stays
    assert record.input_shape == (10, 10)


def test_a_copy_made_after_a_refused_size_still_records_into_itself():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2))
    projector = OperatorNormProjector(model, 1.0)
    with pytest.raises(ParameterError):
        model(torch.zeros(1, 1, 5, 5))
    twin_model, twin_projector = copy.deepcopy((model, projector))
    twin_model(torch.zeros(1, 1, 6, 6))
    assert twin_projector.input_shapes == {"0": (6, 6)} and projector.input_shapes == {"0": None}
    model(torch.zeros(1, 1, 8, 8))
    assert projector.input_shapes == {"0": (8, 8)} and twin_projector.input_shapes == {"0": (6, 6)}


def test_the_original_recording_first_leaves_the_copy_pending():
    torch.manual_seed(0)
    conv = register_operator_norm_constraint(nn.Conv2d(2, 2, 3), 0.5, iterations=1)
    twin = copy.deepcopy(conv)
    conv(torch.zeros(1, 2, 6, 6))  # the original first, this time
    assert conv.parametrizations.weight[0].input_shape == (6, 6) and len(conv._forward_pre_hooks) == 0
    assert twin.parametrizations.weight[0].input_shape is None and len(twin._forward_pre_hooks) == 1
    twin(torch.zeros(1, 2, 10, 10))
    assert twin.parametrizations.weight[0].input_shape == (10, 10)
    assert conv.parametrizations.weight[0].input_shape == (6, 6)
