"""`unetr demo --folds N`: the cross-validation's commands, and each fold's held-out Dice beside the ensemble's."""

import json
from pathlib import Path

import pytest

from unetr.cli import main
from unetr.demo import demo_commands, fold_commands, run_demo


def test_fold_commands():
    cmds = demo_commands("d", cases=6, test_cases=1, folds=3)
    names = [c[0] for c in cmds]
    assert names == ["synth", "train", "cv"] + ["predict", "evaluate"] * 4 + ["report"]
    train = cmds[1]
    assert train[-2:] == ["--folds", "3"] and not any(a.startswith("num_folds=") for a in train)
    assert cmds[2] == ["cv", str(Path("d/run"))]
    assert cmds[3][cmds[3].index("-m") + 1] == str(Path("d/run/fold_0"))
    assert cmds[4][1] == str(Path("d/predictions/fold_0")) and cmds[4][-1] == str(Path("d/evaluation/fold_0"))
    ensemble = cmds[-3]
    assert ensemble[ensemble.index("-m") + 1] == str(Path("d/run")) and ensemble[-1] == str(Path("d/predictions/ensemble"))
    assert cmds[-2][1] == str(Path("d/predictions/ensemble")) and cmds[-2][-1] == str(Path("d/evaluation"))
    report = cmds[-1]
    assert report[report.index("--run") + 1] == str(Path("d/run/fold_0"))
    assert demo_commands("d", cases=6, test_cases=1)[1] != train  # no folds: the one-run demo
    with pytest.raises(ValueError, match="at least 2"):
        fold_commands(demo_commands("d"), 1)


def test_the_demo_reports_each_folds_held_out_dice_beside_the_ensembles(tmp_path, capsys, monkeypatch):
    """The steps themselves are the CLI's (tested elsewhere): here a runner stands in for them and writes the
    evaluations a run would."""
    ran = []

    def runner(cmd, threads=None):
        ran.append(cmd)
        if cmd[0] == "evaluate":
            out = Path(cmd[cmd.index("-o") + 1])
            out.mkdir(parents=True, exist_ok=True)
            dice = 0.9 if out.name == "evaluation" else 0.8 + 0.01 * int(out.name[-1])
            (out / "summary.json").write_text(json.dumps({"mean_dice": dice, "mean_hd95": 3.0, "mean_surface_dice": 0.9,
                                                          "classes": {}}))
        return 0

    result = run_demo(tmp_path / "d", cases=6, test_cases=1, folds=2, runner=runner)
    assert [c[0] for c in ran] == ["synth", "train", "cv", "predict", "evaluate", "predict", "evaluate", "predict",
                                   "evaluate", "report"]
    assert {k: s["mean_dice"] for k, s in result["folds"].items()} == {0: 0.8, 1: 0.81}
    assert result["summary"]["mean_dice"] == 0.9
    import unetr.demo

    monkeypatch.setattr(unetr.demo, "run_command", runner)
    ran.clear()
    assert main(["demo", "--out", str(tmp_path / "e"), "--cases", "6", "--test-cases", "1", "--folds", "2"]) == 0
    assert "held-out mean Dice: fold 0 0.800, fold 1 0.810; ensemble of the 2 folds 0.900" in capsys.readouterr().out
