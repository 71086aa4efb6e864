"""Files a user receives cannot act: a run folder's pipe: command is never run, and an image in a
format that runs programs (EPS) is never opened."""

from __future__ import annotations

from helpers import run_in_process, save_tiny_model

# ---------------------------------------------------------------------------------------------
# Files a user receives cannot act


def test_a_run_folder_s_pipe_command_is_never_run_by_visualize(tmp_path, capsys):
    from helpers import save_tiny_model
    from toolkit.formats import RunDir
    from toolkit.reporting.run_plots import make_plots

    run = tmp_path / "received-run"
    run.mkdir()
    marker = tmp_path / "ran"
    (run / "config.yaml").write_text(f"data:\n  shards: 'pipe:touch {marker}; cat x-{{000000..000001}}.tar'\n")
    save_tiny_model(run / "model.safetensors")
    (run / "eval" / "test").mkdir(parents=True)
    (run / "eval" / "test" / "predictions.csv").write_text("key,label,prob_dog,pred,breed\na,0,0.2,0,\nb,1,0.9,1,\n")
    make_plots(RunDir(run), what={"grid"}, split="test")
    assert not marker.exists()
    assert "is a pipe: command, which is never run from a run folder" in capsys.readouterr().err


def test_images_in_formats_that_run_programs_are_not_opened(tmp_path, capsys, monkeypatch):
    from PIL import EpsImagePlugin

    from toolkit.predict import main as predict_main

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1))
    eps = tmp_path / "photo.jpg"  # an EPS file under a photo's name: Pillow would hand it to Ghostscript
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    model = tmp_path / "model.safetensors"
    save_tiny_model(model)
    assert run_in_process(predict_main, ["--model", str(model), str(eps)]) == 1
    assert opened == [] and "not an image format" in capsys.readouterr().out
