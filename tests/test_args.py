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
    (γ = 0.8 from step 0). A value equal to the effective default is a choice too: the options are None by default."""
    for kwargs, match in (
        (dict(gamma=0.8, gamma_start=0.2), "gamma_start set, but gamma_schedule is 'constant'"),
        (dict(gamma=0.8, gamma_start=0.0), r"gamma_start set, but gamma_schedule is 'constant' \(γ = 0.8"),
        (dict(gamma_schedule_ratio=1.0), "gamma_schedule_ratio set, but gamma_schedule is 'constant'"),
        (dict(gamma_schedule="cosine", gamma_schedule_steps=10, gamma_schedule_ratio=1.0),
         "gamma_schedule_steps and gamma_schedule_ratio both set"),
        (dict(gamma=0.8, gamma_schedule_steps=100), "gamma_schedule_steps set, but gamma_schedule is 'constant'"),
        (dict(gamma=0.8, gamma_schedule_ratio=0.5), "gamma_schedule_ratio set"),
        (dict(gamma=0.8, gamma_schedule="linear", gamma_schedule_steps=10, gamma_schedule_ratio=0.5),
         "gamma_schedule_steps and gamma_schedule_ratio both set"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            TVDArguments(**kwargs)
    scheduled = TVDArguments(gamma=0.8, gamma_schedule="linear", gamma_start=0.1, gamma_schedule_steps=10)
    assert scheduled.gamma_at(0, 100) == pytest.approx(0.1) and scheduled.gamma_at(10, 100) == pytest.approx(0.8)


def test_options_of_another_option_are_unset_by_default_used_when_given_refused_where_unused():
    """A value equal to the default is still a choice: the options that depend on another one default to None (not
    given); given, they are used or refused; not given where they apply, they take the documented default."""
    plain = TVDArguments()
    for name in ("gamma_start", "gamma_schedule_ratio", "gamma_schedule_steps", "focal_gamma", "focal_alpha", "gce_q"):
        assert TVDArguments.__dataclass_fields__[name].default is None
        assert getattr(plain, name) is None, name  # not applied: stays None (so the recorded settings show it)
    linear = TVDArguments(gamma=0.8, gamma_schedule="linear")
    assert (linear.gamma_start, linear.gamma_schedule_ratio, linear.gamma_schedule_steps) == (0.0, 1.0, None)
    assert linear.gamma_at(0, 100) == 0.0 and linear.gamma_at(50, 100) == pytest.approx(0.4)
    steps = TVDArguments(gamma=0.8, gamma_schedule="cosine", gamma_start=0.2, gamma_schedule_steps=4)
    assert (steps.gamma_start, steps.gamma_schedule_ratio, steps.schedule_length(100)) == (0.2, None, 4)
    focal = TVDArguments(loss_type="focal")
    assert (focal.focal_gamma, focal.focal_alpha, focal.gce_q, focal.gamma_start) == (2.0, 1.0, None, None)
    assert TVDArguments(loss_type="focal", focal_gamma=0.0).focal_gamma == 0.0  # given: used, even 0
    assert TVDArguments(loss_type="gce").gce_q == 0.7
    # given where they do not apply, the default's value included: refused naming the field
    for kwargs, match in (
        (dict(focal_gamma=2.0), r"focal_gamma=2.0 set, but loss_type='gamma_ce' does not use it"),
        (dict(focal_alpha=1.0), "focal_alpha=1.0 set"),
        (dict(gce_q=0.7), r"gce_q=0.7 set, but loss_type='gamma_ce'"),
        (dict(loss_type="gce", focal_alpha=1.0), r"focal_alpha=1.0 set, but loss_type='gce'"),
        (dict(loss_type="focal", gamma_start=0.0), r"gamma_start=0.0 set, but loss_type='focal'"),
        (dict(loss_type="focal", gce_q=0.7), r"gce_q=0.7 set, but loss_type='focal'"),
    ):
        with pytest.raises(ValueError, match=match):
            TVDArguments(**kwargs)
    # out of range: named even where unused
    with pytest.raises(ValueError, match="TVDArguments.focal_alpha must be a number > 0"):
        TVDArguments(focal_alpha=0.0)


def test_the_same_settings_built_again_are_accepted():
    """The effective defaults set by __post_init__ apply, so rebuilding (dataclasses.replace, as TVDSFTTrainer does
    for extra_metrics) or parsing the recorded settings again is accepted."""
    import dataclasses

    for kwargs in (dict(), dict(gamma=0.5, gamma_schedule="linear"), dict(loss_type="focal"), dict(loss_type="gce"),
                   dict(gamma_schedule="cosine", gamma_schedule_steps=3)):  # fmt: skip
        args = TVDArguments(**kwargs)
        assert dataclasses.replace(args, extra_metrics=True).__dict__ == {**args.__dict__, "extra_metrics": True}
        assert TVDArguments(**dataclasses.asdict(args)) == args


def test_parser_gives_none_for_unset_options_and_the_value_for_given_ones(tmp_path):
    parser = HfArgumentParser(TVDArguments)
    (unset,) = parser.parse_args_into_dataclasses([])
    assert unset.gamma_start is None and unset.focal_gamma is None
    (given,) = parser.parse_args_into_dataclasses(["--gamma_schedule", "linear", "--gamma_start", "0.0"])
    assert (given.gamma_start, given.gamma_schedule_ratio) == (0.0, 1.0)
    with pytest.raises(ValueError, match="gamma_start set, but gamma_schedule is 'constant'"):
        parser.parse_args_into_dataclasses(["--gamma", "0.8", "--gamma_start", "0.0"])


def test_resume_check_compares_what_either_run_applied():
    """Older checkpoints recorded every field, the unused ones at their old defaults (gamma_start 0.0, ratio 1.0,
    focal_gamma 2.0, ...); they resume with the same settings, whose unused fields are now None. A change of what
    is applied is still refused, naming it."""
    from hf_tvd_loss.checkpoints import check_resume_loss_settings

    old_defaults = dict(gamma_start=0.0, gamma_schedule_ratio=1.0, gamma_schedule_steps=None, focal_gamma=2.0,
                        focal_alpha=1.0)  # fmt: skip

    def marker(**fields):
        return {"tvd_args": {**TVDArguments().__dict__, **old_defaults, **fields}}

    check_resume_loss_settings("ckpt", marker(), TVDArguments())
    check_resume_loss_settings("ckpt", {"tvd_args": TVDArguments().__dict__}, TVDArguments())
    check_resume_loss_settings("ckpt", marker(gamma_schedule="linear"), TVDArguments(gamma_schedule="linear"))
    check_resume_loss_settings("ckpt", marker(loss_type="focal"), TVDArguments(loss_type="focal"))
    for saved, now, match in (
        (marker(gamma_schedule="linear", gamma_schedule_steps=10), TVDArguments(gamma_schedule="linear"),
         "gamma_schedule_steps 10 -> None"),
        (marker(gamma_schedule="linear"), TVDArguments(gamma_schedule="linear", gamma_start=0.5),
         "gamma_start 0.0 -> 0.5"),
        (marker(loss_type="focal"), TVDArguments(loss_type="focal", focal_gamma=1.0), "focal_gamma 2.0 -> 1.0"),
        (marker(), TVDArguments(loss_type="gce"), "loss_type 'gamma_ce' -> 'gce'"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            check_resume_loss_settings("ckpt", saved, now)
