"""TVDArguments: HfArgumentParser integration, validation naming the field, γ schedules."""

from __future__ import annotations

import math

import pytest
from transformers import HfArgumentParser, Seq2SeqTrainingArguments

from hf_tvd_loss import TVDArguments, gamma_at_step


def test_parses_next_to_training_arguments(tmp_path):
    parser = HfArgumentParser((TVDArguments, Seq2SeqTrainingArguments))
    tvd, training = parser.parse_args_into_dataclasses(
        ["--gamma", "0.8", "--min_weight", "0.2", "--label_smoothing", "0.1", "--gamma_schedule", "cosine",
         "--gamma_schedule_ratio", "0.5", "--output_dir", str(tmp_path), "--use_cpu"]
    )  # fmt: skip
    assert (tvd.gamma, tvd.min_weight, tvd.label_smoothing, tvd.gamma_schedule) == (0.8, 0.2, 0.1, "cosine")
    assert training.output_dir == str(tmp_path)


def test_every_field_has_help(capsys):
    parser = HfArgumentParser(TVDArguments)
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--help"])
    text = capsys.readouterr().out
    for name in TVDArguments.__dataclass_fields__:
        assert f"--{name}" in text
        assert TVDArguments.__dataclass_fields__[name].metadata.get("help")


def test_parser_rejects_unknown_schedule():
    with pytest.raises(SystemExit):
        HfArgumentParser(TVDArguments).parse_args_into_dataclasses(["--gamma_schedule", "exponential"])


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(gamma=1.1), "TVDArguments.gamma"),
        (dict(gamma=float("nan")), "TVDArguments.gamma"),
        (dict(min_weight=-0.5), "TVDArguments.min_weight"),
        (dict(label_smoothing=1.0), "TVDArguments.label_smoothing"),
        (dict(gamma_schedule="step"), "TVDArguments.gamma_schedule"),
        (dict(gamma_start=2.0), "TVDArguments.gamma_start"),
        (dict(gamma_schedule_ratio=0.0), "TVDArguments.gamma_schedule_ratio"),
        (dict(gamma_schedule_steps=0), "TVDArguments.gamma_schedule_steps"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TVDArguments(**kwargs)


def test_schedules():
    kw = dict(gamma=0.8, gamma_start=0.0, num_steps=10)
    assert [gamma_at_step(s, schedule="constant", **kw) for s in (0, 5, 50)] == [0.8, 0.8, 0.8]
    assert [gamma_at_step(s, schedule="linear", **kw) for s in (0, 5, 10, 20)] == pytest.approx([0, 0.4, 0.8, 0.8])
    cosine = [gamma_at_step(s, schedule="cosine", **kw) for s in range(12)]
    assert cosine[0] == pytest.approx(0.0) and cosine[10] == pytest.approx(0.8) and cosine[11] == 0.8
    assert cosine[5] == pytest.approx(0.4)
    assert all(a <= b for a, b in zip(cosine, cosine[1:]))
    # decreasing schedules work too
    assert gamma_at_step(5, gamma=0.0, schedule="linear", gamma_start=1.0, num_steps=10) == pytest.approx(0.5)


def test_schedule_length_from_ratio_or_steps():
    assert TVDArguments(gamma_schedule="linear", gamma_schedule_ratio=0.25).schedule_length(100) == 25
    assert TVDArguments(gamma_schedule="linear", gamma_schedule_steps=7).schedule_length(100) == 7
    args = TVDArguments(gamma=0.5, gamma_schedule="linear", gamma_schedule_ratio=0.5)
    assert args.gamma_at(25, 100) == pytest.approx(0.25) and args.gamma_at(80, 100) == 0.5
    assert not math.isnan(args.gamma_at(0, 0))


def test_loss_type_and_focal_fields():
    assert TVDArguments(loss_type="focal", focal_gamma=0.5).focal_gamma == 0.5
    with pytest.raises(ValueError, match="TVDArguments.loss_type"):
        TVDArguments(loss_type="poly")
    with pytest.raises(ValueError, match="TVDArguments.focal_gamma"):
        TVDArguments(loss_type="focal", focal_gamma=-2.0)
    with pytest.raises(ValueError, match="TVDArguments.focal_alpha"):
        TVDArguments(loss_type="focal", focal_alpha=0.0)


def test_schedule_options_the_schedule_would_not_use_are_refused():
    """Issue 22: TVDArguments(gamma=0.8, gamma_start=...) and gamma_schedule_steps alone were accepted and ignored
    (γ = 0.8 from step 0). (An explicit gamma_start=0.0 equals the default and cannot be told apart.)"""
    import pytest

    from hf_tvd_loss import TVDArguments

    for kwargs, match in (
        (dict(gamma=0.8, gamma_start=0.2), "gamma_start set, but gamma_schedule is 'constant'"),
        (dict(gamma=0.8, gamma_schedule_steps=100), "gamma_schedule_steps set, but gamma_schedule is 'constant'"),
        (dict(gamma=0.8, gamma_schedule_ratio=0.5), "gamma_schedule_ratio set"),
        (dict(gamma=0.8, gamma_schedule="linear", gamma_schedule_steps=10, gamma_schedule_ratio=0.5),
         "gamma_schedule_steps and gamma_schedule_ratio both set"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            TVDArguments(**kwargs)
    scheduled = TVDArguments(gamma=0.8, gamma_schedule="linear", gamma_start=0.1, gamma_schedule_steps=10)
    assert scheduled.gamma_at(0, 100) == pytest.approx(0.1) and scheduled.gamma_at(10, 100) == pytest.approx(0.8)
