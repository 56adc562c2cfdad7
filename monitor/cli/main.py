"""The ``expose`` command line: one entry point, one subcommand per job.

This module is the composition root for CLI jobs: it loads the config once, resolves
assets, builds the objects a job needs and passes them down. Errors that reach a
user (ExposeError) are printed as one line on stderr with a non-zero exit status.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from expose.monitor.cli.app import ConfigOpt, ModelOpt, ProfilesOpt, app, audit, err_console, load_cli_config
from expose.monitor.config import Config
from expose.monitor.errors import ExposeError, MediaError
from expose.monitor.features.cache import FeatureCache
from expose.monitor.features.face_model import resolve_face_model
from expose.monitor.features.timeline import FPS
from expose.monitor.features.track import FeatureTrack
from expose.monitor.media.reader import MediaReader, is_network_url

if TYPE_CHECKING:
    from expose.monitor.model.score import Score


def _feature_cache(cfg: Config) -> FeatureCache:
    model = resolve_face_model(cfg.features.face_model, cfg.cache_dir)
    return FeatureCache(cfg.cache_dir, cfg.features, model)


def _media_duration(path: Path) -> float | None:
    try:
        with MediaReader(path, require_video=False) as reader:
            return reader.info.duration
    except MediaError:
        return None  # extraction reports the real problem with its own message


def _summary(track: FeatureTrack, seconds: float, cached: bool) -> dict[str, object]:
    return {
        "source": track.source,
        "duration_s": round(track.duration, 3),
        "frames": len(track),
        "fps": track.fps,
        "face_ratio": round(track.face_ratio, 4),
        "speech_ratio": round(track.speech_ratio, 4),
        "has_audio": track.has_audio,
        "cached": cached,
        "processing_s": round(seconds, 3),
        "x_realtime": round(track.duration / seconds, 2) if seconds > 0 and not cached else None,
    }


@app.command()
def features(
    # str, not Path: Path("rtsp://h/x") collapses to "rtsp:/h/x" and hides the URL check
    media: Annotated[list[str], typer.Argument(help="Media files to extract features from.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o",
        help="Where to write the FeatureTrack (.npz). With several MEDIA: a directory.")] = None,
    allow_no_audio: Annotated[bool, typer.Option(
        "--allow-no-audio", help="Accept media without an audio track (audio features are zeros).")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Re-extract even when cached.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary per line.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Extract 25 fps expression + audio features (a FeatureTrack) and print a summary.

    Results are cached by the file's content hash and extractor version; training and evaluation reuse them.
    """
    cfg = load_cli_config(config)
    cache = _feature_cache(cfg)
    for src in media:
        if is_network_url(src):
            raise MediaError(f"{src}: `expose features` reads files; live URLs go to `expose watch`")
    if output is not None and len(media) > 1 and output.suffix:
        raise ExposeError(f"--output {output}: with several MEDIA, give a directory")
    for name in media:
        m = Path(name)
        total = _media_duration(m)
        t0 = time.perf_counter()
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:.1f}/{task.total:.1f} s"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True,
            disable=as_json or not err_console.is_terminal,
        ) as bar:
            task = bar.add_task(escape(m.name), total=total or None)
            def advance(seconds: float, task: TaskID = task) -> None:
                bar.update(task, completed=seconds)

            track, cached = cache.get(m, require_audio=not allow_no_audio, refresh=no_cache, progress=advance)
        seconds = time.perf_counter() - t0
        if output is not None:
            dest = output / f"{m.stem}.features.npz" if len(media) > 1 or output.is_dir() else output
            track.save(dest)
        info = _summary(track, seconds, cached)
        if output is not None:
            info["output"] = str(dest)
        if track.face_ratio == 0:
            info["warning"] = "no face found"
        if as_json:
            print(json.dumps(info))
        else:
            speed = f"{info['x_realtime']}x real time" if info["x_realtime"] else "from cache"
            print(
                f"{m}: {info['duration_s']} s, {info['frames']} frames @ {track.fps} fps, "
                f"face {100 * track.face_ratio:.1f}%, speech {100 * track.speech_ratio:.1f}%, "
                f"{speed}" + (f" -> {info['output']}" if output is not None else "")
            )
            if track.face_ratio == 0:
                err_console.print(f"[yellow]warning[/]: no face found in {escape(str(m))}")


PRESETS: dict[str, dict[str, Any]] = {
    # "tiny" is the fast-test model (nanoGPT's baby GPT); "small" is the shipped CPU default.
    "tiny": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "audio_layers": 1},
    "small": {},
    "large": {"d_model": 256, "n_layers": 6, "n_heads": 8, "d_ff": 512},
}


@contextlib.contextmanager
def _training_progress(steps: int, val_text: Callable[[dict[str, float]], str],
                       ) -> Iterator[Callable[[int, float, dict[str, float] | None], None]]:
    """A training progress bar (loss, and ``val_text`` of the last validation); yields the
    trainers' ``on_step``. Without a terminal each validation is also one JSON line on stderr."""
    with Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.4f}  val {task.fields[val]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err_console) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"), val="-")

        def on_step(step: int, loss: float, evals: dict[str, float] | None) -> None:
            fields: dict[str, Any] = {"loss": loss}
            if evals:
                fields["val"] = val_text(evals)
                if not err_console.is_terminal:  # no live bar: one line per validation
                    print(json.dumps(evals), file=sys.stderr, flush=True)
            bar.update(task, completed=step, **fields)

        yield on_step


@app.command()
def train(
    corpus: Annotated[list[Path], typer.Argument(
        help="Folders of talking videos (identity = folder name) or CSV manifests (path,identity[,label]).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.safetensors).")],
    holdout: Annotated[str, typer.Option(
        help="Comma-separated identities kept out of training (validation on unseen people).")] = "",
    steps: Annotated[int, typer.Option(help="Optimiser steps (early stopping may end sooner).")] = 2500,
    batch: Annotated[int, typer.Option(help="Windows per step.")] = 48,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    preset: Annotated[str, typer.Option(help="Model size: tiny (tests), small (default, CPU), large (GPU).")] = "small",
    eval_every: Annotated[int, typer.Option(help="Steps between validations / checkpoints.")] = 100,
    patience: Annotated[int, typer.Option(help="Validations without improvement before stopping.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N]; CUDA trains in bf16 mixed precision.")] = "auto",
    seed: Annotated[int, typer.Option(help="Random seed (sampling, init, noise).")] = 0,
    session_gain: Annotated[float, typer.Option(
        help="Augmentation: sd of a per-window, per-channel random log gain (simulated session change).")] = 0.0,
    mirror: Annotated[float, typer.Option(
        help="Augmentation: probability of mirroring a window left-right (trains the null tokens only).")] = 0.0,
    sync_weight: Annotated[float, typer.Option(
        help="Weight of the sync loss (true audio must beat shifted audio by a margin on mouth/jaw).")] = 0.5,
    resume: Annotated[bool, typer.Option(help="Continue from OUT's .state.safetensors if present.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Pre-train the EXAM audio-to-expression diffusion model on a corpus of real talking videos."""
    from dataclasses import asdict

    from expose.monitor.model.exam import ModelConfig
    from expose.monitor.training.corpus import discover, load_tracks
    from expose.monitor.training.train import TrainConfig
    from expose.monitor.training.train import train as run_training

    if preset not in PRESETS:
        raise ExposeError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    cfg = load_cli_config(config)
    cache = _feature_cache(cfg)
    items = discover(corpus)
    hold = {h.strip() for h in holdout.split(",") if h.strip()}
    unknown = hold - {i.identity for i in items}
    if unknown:
        raise ExposeError(f"--holdout names identities not in the corpus: {', '.join(sorted(unknown))}")
    with Progress(TextColumn("[bold]features"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("features", total=len(items))
        tracks = load_tracks(items, cache, on_item=lambda *_: bar.advance(task))
    tcfg = TrainConfig(steps=steps, batch=batch, lr=lr, eval_every=eval_every, patience=patience,
                       device=device, seed=seed, session_gain=session_gain, mirror=mirror,
                       sync_weight=sync_weight)
    mcfg = ModelConfig(**PRESETS[preset])
    with _training_progress(steps, lambda e: f"{e['val']:.4f}") as on_step:
        res = run_training(tracks, out, mcfg, tcfg, holdout=hold, resume=resume, on_step=on_step)
    report = {
        "out": str(out), "identities": len(res.identities), "windows_train": res.windows_train,
        "windows_skipped": res.windows_skipped, "best_step": res.best_step,
        "best_val": round(res.best_val, 5), "seconds": round(res.seconds, 1),
        "last": res.history[-1] if res.history else None, "train_config": asdict(tcfg),
    }
    print(json.dumps(report, indent=2))


@app.command("train-appearance")
def train_appearance(
    corpus: Annotated[list[Path], typer.Argument(
        help="Folders of real talking videos (identity = folder name) or CSV manifests (path,identity[,label]).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Weights to write (.safetensors).")],
    exclude: Annotated[str, typer.Option(
        help="Comma-separated identities left out entirely (e.g. the people an evaluation is reported on).")] = "",
    val_identities: Annotated[str, typer.Option(
        help="Comma-separated identities to validate on (default: a seeded fifth of the identities).")] = "",
    per_clip: Annotated[int, typer.Option(help="Faces sampled per clip.")] = 24,
    stride: Annotated[int, typer.Option(help="Decoded frames between sampled faces.")] = 5,
    size: Annotated[int, typer.Option(help="Network input side in pixels.")] = 128,
    steps: Annotated[int, typer.Option(help="Optimiser steps (early stopping may end sooner).")] = 1500,
    batch: Annotated[int, typer.Option(help="Real faces per step (each with a pseudo-fake).")] = 32,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 2e-3,
    eval_every: Annotated[int, typer.Option(help="Steps between validations / checkpoints.")] = 100,
    patience: Annotated[int, typer.Option(help="Validations without a better AUC before stopping.")] = 5,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    seed: Annotated[int, typer.Option(help="Random seed (validation split, sampling, pseudo-fakes, init).")] = 0,
    degrade: Annotated[float, typer.Option(
        help="Probability that a training pair (real crop and its pseudo-fake alike) is downscaled and "
             "JPEG re-encoded, as a low-bitrate stream would; 0 disables. Validation is never degraded.")] = 0.5,
    occlude: Annotated[float, typer.Option(
        help="Probability that a training face wears an occluder (tinted glasses, a hand or a microphone) in "
             "its real crop and its pseudo-fake alike, so occluder edges are not read as blends; 0 disables.")] = 0.0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT's .state.safetensors if present.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Train the appearance embedding (DiffFake): real faces against self-blended pseudo-fakes."""
    from dataclasses import asdict

    from expose.monitor.features.appearance import AppearanceConfig
    from expose.monitor.training.appearance import AppearanceTrainConfig, collect_faces
    from expose.monitor.training.appearance import train_appearance as run_training
    from expose.monitor.training.corpus import discover

    cfg = load_cli_config(config)
    face_model = resolve_face_model(cfg.features.face_model, cfg.cache_dir)
    items = discover(corpus)
    drop = {x.strip() for x in exclude.split(",") if x.strip()}
    val = [x.strip() for x in val_identities.split(",") if x.strip()]
    known = {i.identity for i in items}
    for flag, names in (("--exclude", drop), ("--val-identities", set(val))):
        if names - known:
            raise ExposeError(f"{flag} names identities not in the corpus: {', '.join(sorted(names - known))}")
    if set(val) & drop:
        raise ExposeError("an identity cannot be both excluded and validated on")
    items = [i for i in items if i.identity not in drop]
    if not items:
        raise ExposeError("no media left to train on")
    for flag, p in (("--degrade", degrade), ("--occlude", occlude)):
        if not 0.0 <= p <= 1.0:
            raise ExposeError(f"{flag} is a probability in [0, 1], got {p}")
    with Progress(TextColumn("[bold]faces"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("faces", total=len(items))
        faces = collect_faces(items, face_model, per_clip, stride, cfg.cache_dir, on_item=lambda _: bar.advance(task))
    tcfg = AppearanceTrainConfig(steps=steps, batch=batch, lr=lr, eval_every=eval_every, patience=patience,
                                 seed=seed, device=device, degrade=degrade, occlude=occlude)
    with _training_progress(steps, lambda e: f"loss {e['val_loss']:.4f} auc {e['val_auc']:.3f} "
                                             f"degraded {e['val_auc_degraded']:.3f} "
                                             f"occluded {e['val_auc_occluded']:.3f}") as on_step:
        try:
            res = run_training(faces, out, AppearanceConfig(size=size), tcfg, val_identities=val or None,
                               resume=resume, on_step=on_step)
        except ValueError as err:
            raise ExposeError(str(err)) from None
    print(json.dumps({"out": str(out), "faces": len(faces), "train_identities": len(res.train_identities),
                      "val_identities": res.val_identities, "best_step": res.best_step, "best": res.best,
                      "steps_run": res.steps_run, "seconds": round(res.seconds, 1), "train_config": asdict(tcfg)},
                     indent=2))


def _base_model(cfg: Config, model: Path | None):  # type: ignore[no-untyped-def]
    from expose.monitor.model.exam import load_model

    return load_model(model if model is not None else cfg.model.path, cfg.model.decision, cfg.features)


def _profile_store(cfg: Config, profiles: Path | None):  # type: ignore[no-untyped-def]
    """The profile store with the configured key (env EXPOSE_PROFILES_KEY, profiles_key_file; none: clear text)."""
    from expose.profiles.crypto import configured_key
    from expose.profiles.store import ProfileStore

    root = profiles or cfg.profiles_dir
    return ProfileStore(root, key=configured_key(cfg.profiles_key_file, root))


def _track_reference(cache: FeatureCache, path: Path):  # type: ignore[no-untyped-def]
    from expose.profiles.store import Reference

    track, _ = cache.get(path, require_audio=True)
    return track, Reference(str(path), track.media_sha256, round(track.duration, 3), 0)


@app.command()
def enroll(
    name: Annotated[str, typer.Argument(help="Profile name (letters, digits, '_', '.', '-').")],
    media: Annotated[list[Path], typer.Argument(help="Genuine reference footage of the subject talking.")],
    profiles: ProfilesOpt = None,
    model: ModelOpt = None,
    steps: Annotated[int, typer.Option(help="Token optimisation steps.")] = 300,
    target_far: Annotated[float, typer.Option(
        help="False-alarm rate the thresholds aim at: per window, and per smoothed window of the live policy.")] = 0.01,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing profile of that name.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Enroll a subject: learn their adapter tokens on the frozen base model and calibrate a threshold."""
    from expose.profiles.enroll import CALIBRATED_ON_REFERENCE, EnrollConfig, EnrollError
    from expose.profiles.enroll import enroll as run_enroll
    from expose.profiles.store import check_name

    check_name(name)
    cfg = load_cli_config(config)
    store = _profile_store(cfg, profiles)
    if store.exists(name) and not force:
        raise ExposeError(f"profile {name!r} already exists in {store.root}; use --force to replace it")
    base = _base_model(cfg, model)
    cache = _feature_cache(cfg)
    refs = []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("features", total=len(media))
        for m in media:
            refs.append(_track_reference(cache, m))
            bar.advance(task)
        etask = bar.add_task("enroll", total=steps)
        t0 = time.perf_counter()
        try:
            profile = run_enroll(name, base, refs, EnrollConfig(steps=steps, target_far=target_far),
                                 on_step=lambda s, _l: bar.update(etask, completed=s))
        except EnrollError as err:
            raise ExposeError(f"cannot enroll {name!r}: {err}") from None
    where = store.save(profile)
    audit(cfg, "profile.enroll", name, references=[r.path for _, r in refs], encrypted=store.key is not None)
    if store.key is None and (warning := store.unencrypted_warning()):  # README: Profiles are biometric data
        err_console.print(f"[yellow]warning[/]: {escape(warning)}", soft_wrap=True)
    c = profile.calibration
    print(f"enrolled {name!r} from {sum(r.duration_s for _, r in refs):.1f} s of reference in "
          f"{time.perf_counter() - t0:.1f} s -> {where}")
    n = cfg.alerts.smoothing
    short = profile.enroll.get("calibration_source") == CALIBRATED_ON_REFERENCE
    kind = "reference" if short else "held-out"
    print(f"calibration: {c.n_windows} {kind} windows, distance mean {c.mean:.4f} sd {c.std:.4f}; thresholds "
          f"{c.threshold:.4f} for one window, {c.alert_threshold(n):.4f} for the mean of {n} (live policy), "
          f"target false-alarm rate {c.target_far:g}")
    faces, voices = len(profile.identity.face), len(profile.identity.voice)
    apps = f", {len(profile.identity.appearance)} appearance embeddings" if len(profile.identity.appearance) else ""
    print(f"identity: {faces} face descriptors, {voices} voice embeddings{apps} enrolled; decision: "
          f"{base.decision.path.name if base.decision and base.decision.path else 'none (motion distance only)'}")
    if base.decision is not None and not faces:
        err_console.print("[yellow]warning[/]: no face descriptor in the reference: the face term is off for this "
                          "profile")
    if base.decision is not None and base.decision.appearance is not None and not len(profile.identity.appearance):
        err_console.print("[yellow]warning[/]: no appearance embedding in the reference: the appearance term is off "
                          "for this profile")
    if base.decision is not None and not voices:
        err_console.print("[yellow]warning[/]: too little speech in the reference for a voice embedding: the voice "
                          "term is off for this profile")
    if short:
        # measured on dev: profiles calibrated on their own 6 s alerted on 4 of 7 genuine clips
        err_console.print("[yellow]warning[/]: the reference is too short to hold out calibration windows; the "
                          "thresholds come from the windows the tokens were fitted to and will raise false "
                          "alarms. Enroll from a minute or more of footage.")


profiles_app = typer.Typer(help="List, show, erase, encrypt, export and import enrolled profiles (biometric "
                           "data: see README, Profiles are biometric data).", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")


@profiles_app.command("list")
def profiles_list(profiles: ProfilesOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False,
                  config: ConfigOpt = None) -> None:
    """List enrolled profiles: encrypted or clear text, and why one cannot be read (e.g. no or another key)."""
    from expose.profiles.store import ProfileError

    store = _profile_store(load_cli_config(config), profiles)
    rows: list[dict[str, object]] = []
    for n in store.names():
        enc = {"encrypted": store.is_encrypted(n), "key_id": store.key_id_of(n)}
        try:
            p = store.load(n)
        except ProfileError as err:  # one unreadable profile must not hide the others
            rows.append({"name": n, **enc, "error": str(err)})
            continue
        rows.append({"name": n, **enc, "created": p.created, "references": len(p.references),
                     "reference_s": round(sum(r.duration_s for r in p.references), 1),
                     "threshold": round(p.calibration.threshold, 4), "base_model": p.base_model_sha256[:12]})
    if as_json:
        print(json.dumps(rows))
    elif not rows:
        print(f"no profiles in {store.root}")
    else:
        for r in rows:
            if "error" in r:
                print(f"{r['name']:<24} UNUSABLE: {r['error']}")
            else:
                print(f"{r['name']:<24} {r['created']}  {r['references']} refs, {r['reference_s']} s, "
                      f"threshold {r['threshold']}, base {r['base_model']}, "
                      + (f"encrypted (key id {r['key_id']})" if r["encrypted"] else "clear text"))


@profiles_app.command("show")
def profiles_show(name: str, profiles: ProfilesOpt = None, config: ConfigOpt = None) -> None:
    """Print one profile's metadata as JSON."""
    from dataclasses import asdict

    p = _profile_store(load_cli_config(config), profiles).load(name)
    meta = {k: v for k, v in asdict(p).items() if k not in ("tokens", "identity")}
    meta["tokens_shape"] = list(p.tokens.shape)
    meta["face_references"], meta["voice_references"] = len(p.identity.face), len(p.identity.voice)
    meta["appearance_references"] = len(p.identity.appearance)
    print(json.dumps(meta, indent=2))


@profiles_app.command("delete")
def profiles_delete(name: str, profiles: ProfilesOpt = None, config: ConfigOpt = None) -> None:
    """Erase a profile: its files are overwritten with zeros and fsynced, then removed (no key needed).

    A running `expose serve` keeps a profile it has loaded until it restarts. Overwriting cannot reach copies
    kept by SSD wear levelling, copy-on-write file systems or snapshots: encrypt profiles (README).
    """
    from expose.monitor.features.cache import cached_entries
    from expose.profiles.crypto import erase_file
    from expose.profiles.store import ProfileError, ProfileStore

    cfg = load_cli_config(config)
    # the feature cache's tracks of the reference media hold the person's face and voice
    # embeddings too: found through the profile's reference hashes (which need its key)
    try:
        refs = {r.sha256 for r in _profile_store(cfg, profiles).load(name).references if r.sha256}
    except ProfileError as err:
        refs = set()
        if ProfileStore(profiles or cfg.profiles_dir).exists(name):
            err_console.print(f"warning: cached features of its reference media not erased: {err}", markup=False,
                              soft_wrap=True)
    store = ProfileStore(profiles or cfg.profiles_dir)  # erasing the profile itself needs no key
    store.delete(name)
    cached = cached_entries(cfg.cache_dir, refs)
    for entry in cached:
        erase_file(entry)
    audit(cfg, "profile.delete", name, root=str(store.root), cache_entries_erased=len(cached))
    print(f"erased profile {name!r} from {store.root} (overwritten, then removed)"
          + (f" and {len(cached)} cached feature file(s) of its reference media" if cached else ""))


def _passphrase(passphrase_file: Path | None, confirm: bool) -> str:
    """--passphrase-file (its first line), else env EXPOSE_EXPORT_PASSPHRASE, else a prompt on a terminal."""
    import os

    from expose.profiles.crypto import PASSPHRASE_ENV

    if passphrase_file is not None:
        try:
            lines = passphrase_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ExposeError(f"cannot read passphrase file {passphrase_file}: {err}") from None
        if not lines or not lines[0]:
            raise ExposeError(f"passphrase file {passphrase_file} is empty")
        return lines[0]
    if env := os.environ.get(PASSPHRASE_ENV):
        return env
    if not sys.stdin.isatty():
        raise ExposeError(f"no passphrase: give --passphrase-file FILE or set {PASSPHRASE_ENV} (no terminal to ask on)")
    return str(typer.prompt("bundle passphrase", hide_input=True, confirmation_prompt=confirm))


PassphraseOpt = Annotated[Path | None, typer.Option(
    "--passphrase-file", help="File whose first line is the bundle passphrase (else env EXPOSE_EXPORT_PASSPHRASE, "
    "else a prompt).", dir_okay=False)]


@profiles_app.command("keygen")
def profiles_keygen(
    out_file: Annotated[Path, typer.Option("--out", help="Key file to create (mode 0600; never overwritten). Keep "
                                           "it outside the profiles folder, and a backup of it: without it "
                                           "encrypted profiles cannot be read.", dir_okay=False)],
    profiles: ProfilesOpt = None, config: ConfigOpt = None,
) -> None:
    """Write a new random 32-byte profiles key (base64) to a new file."""
    from expose.profiles.crypto import write_key_file

    key = write_key_file(out_file, profiles or load_cli_config(config).profiles_dir)
    print(f"wrote a new profiles key (key id {key.key_id}) to {out_file}; use it with profiles_key_file = "
          f"\"{out_file}\" in the config or EXPOSE_PROFILES_KEY_FILE={out_file}, then: expose profiles encrypt")


@profiles_app.command("encrypt")
def profiles_encrypt(profiles: ProfilesOpt = None, config: ConfigOpt = None) -> None:
    """Encrypt every clear-text profile in place with the configured key (the clear files are erased)."""
    cfg = load_cli_config(config)
    store = _profile_store(cfg, profiles)
    if store.key is None:
        raise ExposeError("no profiles key configured: set profiles_key_file (or env EXPOSE_PROFILES_KEY_FILE, "
                          "EXPOSE_PROFILES_KEY); make one with: expose profiles keygen --out FILE")
    names = store.names()
    done = [n for n in names if store.encrypt(n)]
    for n in done:
        audit(cfg, "profile.encrypt", n, key_id=store.key.key_id)
    print(f"encrypted {len(done)} profile(s) with key id {store.key.key_id}"
          + (f": {', '.join(done)}" if done else "") + f"; {len(names) - len(done)} already encrypted")


@profiles_app.command("export")
def profiles_export(
    name: str,
    out_file: Annotated[Path, typer.Option("--out", help="Bundle to write (NAME.expose-profile; mode 0600).",
                                           dir_okay=False)],
    passphrase_file: PassphraseOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    profiles: ProfilesOpt = None, config: ConfigOpt = None,
) -> None:
    """Write one profile to a bundle encrypted with a passphrase (AES-256-GCM, scrypt key), to move it to another
    machine: `expose profiles import` reads it."""
    import os

    from expose.profiles.crypto import seal_bundle

    cfg = load_cli_config(config)
    store = _profile_store(cfg, profiles)
    meta, tokens = store.read_files(name)
    store.load(name)  # refuse to export a damaged profile
    blob = seal_bundle(meta, tokens, _passphrase(passphrase_file, confirm=True))
    try:
        fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL), 0o600)
    except FileExistsError:
        raise ExposeError(f"{out_file} exists; use --force to replace it") from None
    except OSError as err:
        raise ExposeError(f"cannot write {out_file}: {err.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    audit(cfg, "profile.export", name, to=str(out_file))
    print(f"exported profile {name!r} to {out_file} ({len(blob)} bytes, encrypted with the passphrase)")


@profiles_app.command("import")
def profiles_import(
    bundle: Annotated[Path, typer.Argument(help="A bundle written by `expose profiles export`.", dir_okay=False)],
    new_name: Annotated[str | None, typer.Option("--name", help="Store it under this name (default: its own).")
                        ] = None,
    passphrase_file: PassphraseOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing profile of that name.")] = False,
    profiles: ProfilesOpt = None, config: ConfigOpt = None,
) -> None:
    """Read a profile bundle into the store (encrypted with the configured key, if any)."""
    import dataclasses

    from expose.profiles.crypto import open_bundle
    from expose.profiles.store import check_name, decode_profile

    cfg = load_cli_config(config)
    store = _profile_store(cfg, profiles)
    try:
        blob = bundle.read_bytes()
    except OSError as err:
        raise ExposeError(f"cannot read {bundle}: {err.strerror}") from None
    meta, tokens = open_bundle(blob, _passphrase(passphrase_file, confirm=False), str(bundle))
    profile = decode_profile(str(new_name or bundle.stem), meta, tokens, bundle)
    name = check_name(new_name or profile.name)
    if store.exists(name) and not force:
        raise ExposeError(f"profile {name!r} already exists in {store.root}; use --force to replace it, or --name")
    store.save(dataclasses.replace(profile, name=name))
    audit(cfg, "profile.import", name, bundle=str(bundle), replaced=force)
    print(f"imported profile {name!r} into {store.root} ("
          + (f"encrypted, key id {store.key.key_id})" if store.key is not None else "clear text)"))
    if store.key is None and (warning := store.unencrypted_warning()):
        err_console.print(f"[yellow]warning[/]: {escape(warning)}", soft_wrap=True)


def _scoring_context(cfg: Config, model: Path | None, profiles: Path | None, names: set[str]):  # type: ignore[no-untyped-def]
    """Load the base model and the named profiles, refusing profiles of another base model."""
    from expose.monitor.model.backends import make_scorer
    from expose.monitor.model.exam import pick_device
    base = _base_model(cfg, model)
    store = _profile_store(cfg, profiles)
    loaded = {}
    for n in sorted(names):
        p = store.load(n)
        p.check_base(base.sha256, base.decision.sha256 if base.decision else None)
        loaded[n] = p
    scorer = make_scorer(base, cfg.model.backend, pick_device(cfg.model.device), cache_dir=cfg.cache_dir)
    return scorer, loaded


@app.command()
def score(
    media: Annotated[Path, typer.Argument(help="Media file to check.")],
    claimed: Annotated[str, typer.Option("--as", help="Profile the person on screen claims to be.")],
    profiles: ProfilesOpt = None,
    model: ModelOpt = None,
    hop: Annotated[float, typer.Option(help="Seconds between window starts.")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Score a clip against a profile: distance per window, then the live alert policy's timeline and verdict."""
    from dataclasses import asdict

    from expose.monitor.alerts.policy import AlertPolicy, PolicySettings
    from expose.monitor.evaluation.clips import score_track, timeline

    cfg = load_cli_config(config)
    scorer, loaded = _scoring_context(cfg, model, profiles, {claimed})
    profile = loaded[claimed]
    track, _ = _feature_cache(cfg).get(media, require_audio=True)
    policy = AlertPolicy(PolicySettings.from_config(cfg.alerts))
    res = score_track(track, profile, scorer, hop=max(1, int(round(hop * FPS))), policy=policy)
    thr = profile.calibration.threshold
    reason = _main_reason(res.scores, thr)
    if as_json:
        print(json.dumps({
            "media": str(media), "claimed": claimed, "threshold": thr, "verdict": res.verdict,
            "alert_at": res.alert_at, "clip_score": res.clip_score, "over_threshold": res.over_threshold,
            "reason": reason,
            "windows": [asdict(s) | {"z": profile.normalized(s.distance) if s.distance is not None else None,
                                     "state": st, "explanation": s.explanation}
                        for s, st in zip(res.scores, res.states, strict=True)],
        }))
        return
    print(f"{media} as {claimed!r}: {len(res.scores)} windows, one-window threshold {thr:.4f}")
    cal = profile.calibration  # identity and fit shown relative to the profile's calibration
    for s, st in zip(res.scores, res.states, strict=True):
        if s.distance is None:
            print(f"  {s.t0:7.2f}-{s.t1:7.2f} s  insufficient: {s.reason}")
        else:
            flag = "OVER" if s.distance > thr else "    "
            driver = f"  driver {s.driver}" if s.driver else ""
            print(f"  {s.t0:7.2f}-{s.t1:7.2f} s  distance {s.distance:+.4f} {flag} "
                  f"(identity {s.identity - cal.identity_mean:+.4f}, sync {s.sync:+.4f}, "
                  f"fit {s.fit - cal.fit_mean:+.4f}, face {_term(s.face)}, voice {_term(s.voice)}"
                  f"{'' if s.appearance is None else f', appearance {s.appearance:+.1f}'})  {st}{driver}")
    print(f"timeline  [{timeline(res)}]  ('.' authentic, '~' suspect, '!' alert, '?' insufficient)")
    cs = "n/a" if res.clip_score is None else f"{res.clip_score:+.2f}"
    when = f"alert at {res.alert_at:.1f} s" if res.alert_at is not None else "no alert"
    print(f"verdict: {res.verdict.upper()}  ({when} under the live policy; clip score {cs}, "
          f"{100 * res.over_threshold:.0f}% of windows over the one-window threshold)")
    if reason is not None:
        print(f"main reason: {reason['explanation']}  ({reason['driver']} drove {reason['windows']} of the "
              f"{reason['over']} windows over the threshold)")


def _term(v: float | None) -> str:
    """A face / voice term (T-normalised: about 0 for a stranger), or n/a when not measured."""
    return "  n/a" if v is None else f"{v:+5.1f}"


def _main_reason(scores: list[Score], threshold: float) -> dict[str, Any] | None:
    """The term that drove most of the windows over the one-window threshold, in an analyst's
    words (the earliest on a tie); None when no such window has a driver (none over the
    threshold, or scored without a decision)."""
    from expose.monitor.alerts.policy import count_drivers, top_driver
    from expose.monitor.model.verification import explain

    over = [s for s in scores if s.distance is not None and s.distance > threshold]
    counts = count_drivers(s.driver for s in over)
    driver = top_driver(counts)
    if driver is None:
        return None
    return {"driver": driver, "explanation": explain(driver), "windows": counts[driver], "over": len(over)}


@app.command("export-onnx")
def export_onnx(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the ONNX model (FILE.onnx).",
                                      dir_okay=False)],
    model: ModelOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Export the base model's denoiser (the scorer's batched network call) to ONNX, for model.backend onnxruntime.

    Its metadata carries the model config, the fusion weights and score settings and the checkpoint's sha256.
    """
    from expose.monitor.model.exam import load_model
    from expose.monitor.model.onnx_export import export_onnx as export

    cfg = load_cli_config(config)
    base = load_model(model if model is not None else cfg.model.path)  # the decision is not part of the graph
    t0 = time.perf_counter()
    data = export(base, out)
    print(f"wrote {out} ({len(data) / 1e6:.1f} MB) from {base.path.name} (sha256 {base.sha256[:12]}) "
          f"in {time.perf_counter() - t0:.1f} s")


@app.command(name="eval")
def evaluate_cmd(
    cases: Annotated[Path, typer.Argument(help="CSV with columns path,claimed,label (real | fake | fake:<method>).",
                                          exists=False)],
    profiles: ProfilesOpt = None,
    model: ModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Evaluate detection on labelled clips: ROC AUC, EER, TPR at 1% FPR, per claimed identity and per fake method."""
    from expose.monitor.evaluation.cases import read_cases, summarize
    from expose.monitor.evaluation.clips import score_track

    cfg = load_cli_config(config)
    rows = read_cases(cases)
    scorer, loaded = _scoring_context(cfg, model, profiles, {r.claimed for r in rows})
    cache = _feature_cache(cfg)
    clips = []
    with Progress(TextColumn("[bold]eval"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True,
                  disable=not err_console.is_terminal) as bar:
        task = bar.add_task("eval", total=len(rows))
        for r in rows:
            try:
                track, _ = cache.get(r.path, require_audio=True)
                res = score_track(track, loaded[r.claimed], scorer)
                value, note = res.clip_score, ("" if res.clip_score is not None else "insufficient")
            except MediaError as err:
                value, note = None, str(err)
            clips.append({"path": str(r.path), "claimed": r.claimed, "label": r.label, "score": value,
                          **({"note": note} if note else {})})
            bar.advance(task)
    report = summarize(clips)
    if as_json:
        print(json.dumps(report))
        return
    def fmt(v: object) -> str:
        return "n/a" if v is None else f"{v:.3f}"
    print(f"{report['n_scored']} clips scored ({report['n_real']} real, {report['n_fake']} fake), "
          f"{report['n_unscored']} without a score")
    print(f"overall: AUC {fmt(report['auc'])}  EER {fmt(report['eer'])}  TPR@1%FPR {fmt(report['tpr_at_1pct_fpr'])}")
    for key in ("by_method", "by_claimed"):
        for k, v in report[key].items():
            print(f"  {key[3:]:<7} {k:<28} AUC {fmt(v['auc'])}  (n={v['n']})")


from expose.monitor.cli import bench as cli_bench  # noqa: E402,F401  (registers bench on the same app)
from expose.monitor.cli import demo as cli_demo  # noqa: E402,F401  (registers demo on the same app)
from expose.monitor.cli import live as cli_live  # noqa: E402,F401  (registers serve and watch on the same app)


def main() -> None:
    """Console entry point: user-facing errors become one line and exit status 2."""
    try:
        app()
    except ExposeError as err:
        err_console.print(f"expose: error: {err}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("expose: interrupted")
        sys.exit(130)

