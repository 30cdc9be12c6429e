"""`heldout run-local`: run an image (T2) or a codebase (T3) on your own sample cases with
exactly the platform's runner, container flags, limits and output checks, and get the same
classified result the platform would give.

    heldout run-local --bundle challenge.yaml --phase qualification --image algo.tar.gz \\
        --cases ./my-cases
    heldout run-local --bundle challenge.yaml --phase final --codebase ./repo \\
        --training-data ./train --cases ./my-cases

Cases use the dataset layout (`images/<interface>/<case><ext>`, labels.csv optional; a
training set needs labels.csv as its reference.csv).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import typer

from server.challenges.bundle import load_bundle
from server.challenges.schemas import PhaseSpec
from server.config import get_settings
from server.datasets import convert, metaimage
from server.datasets.manifest import read_labels, split_case_file
from server.errors import HeldoutError
from worker.executor.engine import Backend, Engine, EngineError

app = typer.Typer(add_completion=False)


def _phase(bundle: Path | None, challenge: str | None, phase: str) -> PhaseSpec:
    if bundle is not None:
        spec = load_bundle(bundle)
        for p in spec.phases:
            if p.slug == phase:
                return p
        raise typer.BadParameter(f"the bundle has no phase {phase!r}", param_hint="--phase")
    if challenge is None:
        raise typer.BadParameter("give --bundle FILE or --challenge SLUG", param_hint="--bundle")
    from server.client import Client

    data = Client(get_settings()).get(f"/challenges/{challenge}/phases/{phase}")
    return PhaseSpec.model_validate(
        {
            "slug": data["slug"],
            "title": data["title"],
            "kind": data["kind"],
            "inputs": data["inputs"],
            "outputs": data["outputs"],
            "limits": data["limits"],
            "metrics": data["metrics"],
            "training_dataset": "local" if data["kind"] == "codebase" else None,
        }
    )


def _case_ids(root: Path, hint: str) -> set[str] | None:
    """The case ids of root/labels.csv, where there is one (the platform names cases so)."""
    labels = root / "labels.csv"
    if not labels.is_file():
        return None
    try:
        return set(read_labels(labels.read_text(encoding="utf-8-sig"), str(labels))[1])
    except HeldoutError as exc:
        raise typer.BadParameter(exc.detail, param_hint=hint) from exc


def _case_files(folder: Path, ids: set[str] | None, hint: str) -> dict[str, Path]:
    """case id -> its one file in folder, named as the platform's datasets name cases."""
    found: dict[str, Path] = {}
    # A MetaImage pair (.mhd header, .raw/.zraw data) is one case file: the header, which is
    # made one .mha (as the platform's datasets hold it) when the case is staged.
    companions = set()
    for f in folder.iterdir():
        if f.suffix.lower() == metaimage.HEADER_SUFFIX:
            try:
                companion = metaimage.data_file(f)
            except metaimage.MetaImageError as exc:
                raise typer.BadParameter(f"{folder}/{exc}", param_hint=hint) from exc
            if not (folder / companion).is_file():
                raise typer.BadParameter(f"{f} names {companion}, missing", param_hint=hint)
            companions.add(companion)
    for f in sorted(folder.iterdir()):
        if f.name in companions:
            continue
        if f.is_dir():  # a DICOM series, named by its case id (made one .mha when staged)
            if ids is not None and f.name not in ids:
                raise typer.BadParameter(f"{f}/ names no case of labels.csv", param_hint=hint)
            split: tuple[str, str] | None = (f.name, "")
        else:
            split = split_case_file(f.name, ids)
        if split is None:
            why = "names no case of labels.csv" if ids is not None else "has no extension"
            raise typer.BadParameter(f"{f} {why}", param_hint=hint)
        case = split[0]
        if case in found:
            raise typer.BadParameter(
                f"case {case!r} has two files in {folder} ({found[case].name}, {f.name}): "
                "one file per case and input (an .mhd header names its own .raw/.zraw in "
                "ElementDataFile)",
                param_hint=hint,
            )
        found[case] = f
    return found


def _cases(root: Path, spec: PhaseSpec) -> dict[str, dict[str, Path]]:
    cases: dict[str, dict[str, Path]] = {}
    ids = _case_ids(root, "--cases")
    for interface in spec.inputs:
        folder = root / "images" / interface.slug
        if not folder.is_dir():
            raise typer.BadParameter(
                f"{folder} is missing (input {interface.slug!r})", param_hint="--cases"
            )
        for case, f in _case_files(folder, ids, "--cases").items():
            cases.setdefault(case, {})[interface.slug] = f
    incomplete = [c for c, files in cases.items() if len(files) != len(spec.inputs)]
    if incomplete or not cases:
        raise typer.BadParameter(
            f"cases without every input: {incomplete or 'no cases'}", param_hint="--cases"
        )
    return cases


def _image(run_key: str, engine: Engine, image: str) -> str:
    from worker.intake import IntakeError, IntakeLimits, check_image, load_image

    path = Path(image)
    try:
        if path.is_file():
            return str(load_image(engine, path, tag=f"heldout/{run_key}:image").image_id)
        attrs = engine.inspect_image(image)
        check_image(engine, attrs, IntakeLimits())
        return str(attrs["Id"])
    except IntakeError as exc:
        _report({"status": "refused", "reason": exc.reason}, False)
        raise typer.Exit(1) from exc


def _build(
    run_key: str, engine: Engine, context: Path, what: str, out: dict[str, Any]
) -> str | None:
    """Build as the platform does (same caps and build network); None on failure."""
    from worker.builder import BuildError, build_image

    settings = get_settings()
    try:
        return build_image(
            engine,
            context,
            context,
            f"heldout/{run_key}:{what}",
            timeout_s=settings.build_timeout_s,
            max_image_bytes=settings.max_image_bytes,
            network=settings.build_network,
        ).image_id
    except BuildError as exc:
        out.update(
            status="failed",
            stage=f"{what} build",
            reason="build_failed",
            message=exc.message,
            log=exc.log[-4000:],
        )
        return None


def _train(
    run_key: str,
    executor: Backend[Any],
    spec: PhaseSpec,
    codebase: Path,
    data: Path,
    work: Path,
    out: dict[str, Any],
) -> str | None:
    from worker.builder import assemble_inference_context
    from worker.runner import run_training

    training_image = _build(run_key, executor, codebase / spec.training_dir, "training", out)
    if training_image is None:
        return None
    slug = spec.inputs[0].slug
    ids = _case_ids(data, "--training-data")
    files = _case_files(data / "images" / slug, ids, "--training-data")
    result = run_training(
        executor,
        image=training_image,
        job_id=run_key,
        attempt=1,
        limits=spec.training_limits or spec.limits,
        data=files,
        labels=data / "labels.csv",
        work=work / "train",
        runtime=spec.runtime,
    )
    out["training"] = {
        "duration_s": result.duration_s,
        "stdout": result.stdout_tail[-4000:],
        "stderr": result.stderr_tail[-4000:],
    }
    if result.failure is not None:
        out.update(
            status="failed",
            stage="training",
            reason=result.failure.reason,
            message=result.failure.message,
        )
        return None
    context = assemble_inference_context(
        codebase, spec.inference_dir, work / "train" / "output", work / "inference"
    )
    return _build(run_key, executor, context, "inference", out)


def _as_staged(files: dict[str, Path], work: Path) -> dict[str, Path]:
    """A MetaImage pair, a NIfTI file or a DICOM series directory becomes one .mha, as the
    platform's ingest stores it (server/datasets/convert.py); other files as given."""
    staged = dict(files)
    for slug, f in files.items():
        stem = f.name if f.is_dir() else (split_case_file(f.name) or (f.name, ""))[0]
        dest = work / slug / f"{stem}.mha"
        if f.suffix.lower() == metaimage.HEADER_SUFFIX:
            staged[slug] = metaimage.to_mha(f, dest)
        elif convert.is_decoded(f):
            try:
                staged[slug] = convert.decoded_to_mha(f, dest, str(f))
            except convert.ConversionError as exc:
                raise typer.BadParameter(str(exc), param_hint="--cases") from exc
    return staged


STDERR_LINES = 20  # per case in the plain report; --json carries the last 2,000 characters


def _report(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    if out.get("status") == "refused":
        typer.echo(f"refused: {out['reason']}")
        return
    if "stage" in out:
        typer.echo(f"failed at {out['stage']}: {out['reason']}: {out['message']}")
    for case, res in out.get("cases", {}).items():
        if res["failure"]:
            typer.echo(f"case {case}: {res['failure']['reason']}: {res['failure']['message']}")
        else:
            values = ", ".join(f"{k}={v}" for k, v in res["outputs"].items())
            typer.echo(f"case {case}: ok ({values}) in {res['duration_s']:.1f} s")
        # Your own cases: what the algorithm wrote to stderr is yours to read.
        lines = res.get("stderr", "").rstrip("\n").splitlines()[-STDERR_LINES:]
        for line in lines:
            typer.echo(f"  stderr | {line}")
    typer.echo(f"result: {out['status']}")


@app.command()
def run_local(
    phase: str = typer.Option(..., help="phase slug"),
    cases: Path = typer.Option(..., exists=True, file_okay=False, help="your sample cases"),
    bundle: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="challenge bundle holding the phase"
    ),
    challenge: str | None = typer.Option(None, help="or: read the phase from the server"),
    image: str | None = typer.Option(None, help="image tag, or a `docker save` archive"),
    codebase: Path | None = typer.Option(
        None, exists=True, file_okay=False, help="a codebase checkout (T3)"
    ),
    training_data: Path | None = typer.Option(
        None, exists=True, file_okay=False, help="training cases with labels.csv (T3)"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    # long: a CLI command mirroring the pipeline: image, run, evaluate, report
    """Run like the platform does, on your own cases."""
    from worker.executor.docker import DockerExecutor
    from worker.executor.docker_engine import connect
    from worker.runner import run_case

    try:
        spec = _phase(bundle, challenge, phase)
    except HeldoutError as exc:
        raise typer.BadParameter(exc.detail, param_hint="--bundle") from exc
    if (image is None) == (codebase is None):
        raise typer.BadParameter("give --image or --codebase", param_hint="--image")
    if codebase is not None and training_data is None:
        raise typer.BadParameter("--codebase needs --training-data", param_hint="--training-data")
    samples = _cases(cases, spec)
    client = connect(timeout=60)
    work = Path(tempfile.mkdtemp(prefix="heldout-local-"))
    # A participant's own machine may not allow loop mounts: /output is then checked for
    # size after each run (logged), where the platform's workers refuse to run at all.
    executor = DockerExecutor(client, work / "executor", allow_unsized_fallback=True)
    out: dict[str, Any] = {"phase": spec.slug, "cases": {}}
    run_key = f"local-{uuid.uuid4().hex[:8]}"  # concurrent local runs never share a name
    try:
        if codebase is not None:
            assert training_data is not None
            image_id = _train(run_key, executor, spec, codebase, training_data, work, out)
            if image_id is None:
                _report(out, as_json)
                raise typer.Exit(1)
        else:
            assert image is not None
            image_id = _image(run_key, executor, image)
        for i, (case, given) in enumerate(samples.items()):
            files = _as_staged(given, work / f"case-{i}-files")
            done = run_case(
                executor,
                image=image_id,
                job_id=run_key,
                attempt=1,
                limits=spec.limits,
                inputs=spec.inputs,
                outputs=spec.outputs,
                case=case,
                files=files,
                work=work / f"case-{i}",
                runtime=spec.runtime,
            )
            res = done.cases[case]
            out["cases"][case] = {
                "failure": {"reason": res.failure.reason, "message": res.failure.message}
                if res.failure
                else None,
                "outputs": {k: str(v) for k, v in res.values.items()},
                "duration_s": done.run.duration_s,
                "stderr": done.run.stderr_tail[-2000:],
            }
        failed = any(c["failure"] for c in out["cases"].values())
        out["status"] = "failed" if failed else "succeeded"
        _report(out, as_json)
        if failed:
            raise typer.Exit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        # Drop only the tags this run made. The image behind them may also carry the
        # participant's own tags (a loaded archive of an image they have): removing a tag
        # by name, unforced, untags it and deletes the image only when no other tag is left.
        ours = f"heldout/{run_key}:"
        for made in executor.list_images(f"heldout/{run_key}"):
            for tag in made.tags:
                if tag.startswith(ours):
                    with contextlib.suppress(EngineError):
                        executor.remove_image(tag)


if __name__ == "__main__":
    # Run through `heldout run-local`: its help and errors name that command.
    sys.exit(app(prog_name="heldout run-local"))
