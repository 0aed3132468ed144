"""The data subcommands end to end: synth -> check -> plan -> preprocess, and their exit codes."""

import json

from unetr.cli import main


def test_synth_check_plan_preprocess(tmp_path, capsys):
    ds = tmp_path / "ds"
    assert main(["synth", str(ds), "--cases", "3", "--test-cases", "1", "--seed", "2"]) == 0
    assert main(["check", str(ds)]) == 0
    assert "OK (nnunet, 3 training" in capsys.readouterr().out
    plan_p = tmp_path / "plan.json"
    assert main(["plan", str(ds), "-o", str(plan_p), "--spacing", "paper", "--preset", "tiny", "--roi", "48",
                 "--set", "label_resample=nearest"]) == 0
    plan = json.loads(plan_p.read_text())
    assert plan["target_spacing"] == [1.5, 1.5, 2.0] and plan["roi"] == [48, 48, 48] and plan["preset"] == "tiny"
    assert plan["label_resample"] == "nearest" and (tmp_path / "fingerprint.json").is_file()
    assert main(["preprocess", str(ds), "--plan", str(plan_p), "--cache", str(tmp_path / "cache"),
                 "--workers", "0"]) == 0
    assert len(list((tmp_path / "cache").glob("phantom_*_image.npy"))) == 3


def test_check_fails_on_a_broken_dataset(tmp_path, capsys):
    ds = tmp_path / "ds"
    main(["synth", str(ds), "--cases", "2", "--test-cases", "0"])
    (ds / "labelsTr" / "phantom_001.nii.gz").write_bytes(b"\x1f\x8b broken")
    assert main(["check", str(ds)]) == 1
    out = capsys.readouterr().out
    assert "phantom_001" in out and "not usable" in out


def test_user_errors_exit_2(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["plan", str(tmp_path), "--spacing", "1", "2"]) == 2
