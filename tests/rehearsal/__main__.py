"""The rehearsal (`make rehearsal`): every job of docs/reproduce.md on miniature corpora, on this machine.

    python -m tests.rehearsal [--out runs/rehearsal]

1. writes each of the 20 pretraining corpora in its real layout, and the evaluation sets, under OUT/raw/;
2. makes the leakage list (`data_recipes ids`) and builds every corpus with its recipe into
   OUT/data/shards/ (training splits with `--exclude`), checking the leaked clips were dropped;
3. trains a tiny HTSAT-22 (configs/multitask/htsat22.yaml + configs/rehearsal/{model,htsat22}.txt);
4. pretrains CLAP from configs/experiment/clap2023.yaml + configs/rehearsal/{model,clap2023}.txt over
   the 20-source mix, kills it after its first periodic checkpoint and resumes with `--ckpt_path auto`;
5. trains a tiny captioner (configs/rehearsal/captioning.yaml) on that CLAP's embeddings of the AudioCaps
   and Clotho training shards;
6. runs `eval --tasks all --captioner ...`: the 26-task report lands in OUT/runs/clap2023/eval/
   (results.md/.csv/.png), every row with a number.

Everything runs with OUT as the working directory, so the configs' relative paths (data/shards,
runs/htsat22, data/exclude) resolve there, as they do from a cluster job's submit directory.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKER = ".clap-rehearsal"  # only a folder holding it is ever deleted by a rerun
RATE = 16000  # shard rate = the rehearsal model's rate: the loader does not resample


def log(message: str) -> None:
    print(f"[rehearsal {time.strftime('%H:%M:%S')}] {message}", flush=True)


def overrides(*names: str) -> list[str]:
    from clap_lightning.config import read_overrides

    return [item for name in names for item in read_overrides(REPO / "configs" / "rehearsal" / f"{name}.txt")]


def ensure_ffmpeg(out: Path) -> None:
    """Put an ffmpeg on PATH for the video corpora: the system's, or the imageio-ffmpeg wheel's binary."""
    if shutil.which("ffmpeg"):
        return
    import imageio_ffmpeg

    bin_dir = out / "bin"
    bin_dir.mkdir(exist_ok=True)
    link = bin_dir / "ffmpeg"
    if not link.exists():
        link.symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def data_recipes(*args: str) -> str:
    """Run `python -m data_recipes ARGS` in this process; return its stdout, raise on a non-zero status."""
    from data_recipes import cli

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = cli.main(list(args))
    if status:
        raise SystemExit(f"python -m data_recipes {' '.join(args)} failed with status {status}")
    return buffer.getvalue()


def make_corpora(raw: Path) -> None:
    from tests.rehearsal import corpora
    from tests.unit.recipes.conftest import Corpus

    for name, write in corpora.PRETRAINING.items():
        (raw / name).mkdir(parents=True)
        write(Corpus(raw / name))
    for source in corpora.EVAL_ONLY:
        (raw / source).mkdir(parents=True)
        corpora.eval_set(Corpus(raw / source), source)


def build_shards(raw: Path, jobs=None) -> None:
    """Build every split the configs read; `jobs` (a SlurmJobs) submits each build as a job array instead."""
    from clap_lightning.data import schema
    from data_recipes import base
    from tests.rehearsal import corpora

    merges: list[str] = []

    def build(name: str, *args: str) -> None:
        if jobs is None:
            data_recipes("build", name, *args)
        else:
            merges.append(jobs.build(name, list(args)))

    def wait_for_builds() -> None:  # a corpus' second array may start only after its first merge
        if jobs is not None:
            jobs.wait(merges)
            merges.clear()

    exclude = Path("data/exclude/eval_test_ids.txt")
    exclude.parent.mkdir(parents=True, exist_ok=True)
    exclude.write_text(data_recipes("ids", "audiocaps", "--src", str(raw / "audiocaps" / "src"), "--split", "test")
                       + data_recipes("ids", "clotho", "--src", str(raw / "clotho" / "src"), "--split", "test"))
    common = ["--out", str(Path("data/shards").resolve()), "--sample-rate", str(RATE), "--no-progress",
              "--samples-per-shard", "2"]
    for name in corpora.PRETRAINING:
        src = ["--src", str(raw / name / "src")]
        options = [f"-o{k}={v}" for k, v in corpora.OPTIONS.get(name, {}).items()]
        build(name, *src, *common, *options, "--split", "train", "--exclude", str(exclude.resolve()))
    wait_for_builds()
    for name in corpora.PRETRAINING:
        held_out = [s for s in base.get_recipe_class(name).splits if s in ("valid", "test")]
        if held_out and name not in corpora.OPTIONS:
            options = [f"-o{k}={v}" for k, v in corpora.OPTIONS.get(name, {}).items()]
            build(name, "--src", str(raw / name / "src"), *common, *options, *[f"--split={s}" for s in held_out])
    wait_for_builds()
    for source in corpora.EVAL_ONLY:  # tiny tables through the generic csv recipe: built here in both modes
        options = [f"-o{k}={v}" for k, v in corpora.eval_options(source).items()]
        data_recipes("build", "csv", "--src", str(raw / source / "src"), *common, *options)
    for name, count in corpora.LEAKED.items():
        excluded = schema.read_manifest(schema.split_dir("data/shards", name, "train"))["excluded"]
        if excluded != count:
            raise SystemExit(f"leakage filter: {name}/train dropped {excluded} clips, expected {count}")


def cli(*args: str, **popen) -> subprocess.Popen:
    """Start `python -m clap_lightning.cli ARGS` with this repository first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "clap_lightning.cli", *args], env=env, **popen)


def run(*args: str) -> None:
    status = cli(*args).wait()
    if status:
        raise SystemExit(f"clap-lightning {' '.join(args[:2])} failed with status {status}")


def newest_step(checkpoints: Path) -> int:
    steps = [int(p.stem.rsplit("step=", 1)[1]) for p in checkpoints.glob("*step=*.ckpt") if p.stem[-1].isdigit()]
    return max(steps, default=0)


def pretrain_with_a_kill(config: str, args: list[str], run_dir: Path) -> int:
    """Fit until the first periodic checkpoint, kill the process (as a node failure would), resume; return its step."""
    first = cli("fit", "--config", config, *args)
    while first.poll() is None and newest_step(run_dir / "checkpoints") == 0:
        time.sleep(0.5)
    killed_at = newest_step(run_dir / "checkpoints")
    if first.poll() is not None:
        raise SystemExit(f"the first attempt ended (status {first.returncode}) before its first checkpoint")
    first.send_signal(signal.SIGKILL)
    first.wait()
    log(f"killed the CLAP run after its checkpoint at step {killed_at}; resuming with --ckpt_path auto")
    run("fit", "--config", config, "--ckpt_path", "auto", *args)
    return killed_at


def source_shares(run_dir: Path) -> dict[str, float]:
    """Training samples per source over the whole run (totals survive the kill), from the last attempt's CSV log."""
    logs = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    rows = list(csv.DictReader(logs[-1].open()))
    last = {}
    for row in rows:
        last.update({k: v for k, v in row.items() if k.startswith("data/samples_") and v})
    return {k.removeprefix("data/samples_"): float(v) for k, v in last.items()}


def train_captioner(clap_checkpoint: Path) -> Path:
    """Cache the CLAP's embeddings of the AudioCaps + Clotho training shards, fit the tiny captioner on them."""
    from clap_lightning.config import load_config
    from clap_lightning.eval.embed import split_urls
    from clap_lightning.lit.caption_data import cache_from_shards
    from clap_lightning.lit.captioning import fit_captioning
    from clap_lightning.lit.captioning_config import CaptioningConfig

    cache = Path("data/captioning/train.pt").resolve()
    urls = [url for corpus in ("audiocaps", "clotho") for url in split_urls(Path("data/shards") / corpus / "train")]
    clips = cache_from_shards(clap_checkpoint.resolve(), urls, cache)
    config = load_config(CaptioningConfig, REPO / "configs" / "rehearsal" / "captioning.yaml",
                         [f"clap_checkpoint={clap_checkpoint.resolve()}", f"data.train={cache}"])
    fit_captioning(config)
    log(f"captioner: {config.trainer.max_steps} steps on {clips} clips")
    return (Path(config.run_dir) / "checkpoints" / "last.ckpt").resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.rehearsal", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/rehearsal", help="working folder (deleted first if a rehearsal made it)")
    parser.add_argument("--slurm", action="store_true",
                        help="run the builds, both trainings and eval as SLURM jobs (slurm/rehearse.sh)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    out = Path(args.out).resolve()
    if out.exists():
        if not (out / MARKER).exists():
            raise SystemExit(f"error: {out} exists and is not a rehearsal folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).touch()
    sys.path.insert(0, str(REPO))
    os.chdir(out)
    ensure_ffmpeg(out)

    log("1/6 writing miniature corpora (20 pretraining corpora, evaluation sets)")
    make_corpora(out / "raw")
    from clap_lightning.config import ExperimentConfig, load_config
    from clap_lightning.lit.multitask_config import MultiTaskConfig
    from tests.rehearsal.slurm import SlurmJobs

    jobs = SlurmJobs(REPO, out / "logs") if args.slurm else None
    log("2/6 leakage list and shards, every corpus with its recipe" + (" (job arrays)" if jobs else ""))
    build_shards(out / "raw", jobs)
    log("3/6 HTSAT-22, tiny (configs/multitask/htsat22.yaml + size overrides)")
    htsat22, htsat_args = str(REPO / "configs/multitask/htsat22.yaml"), overrides("model", "htsat22")
    if jobs:
        jobs.multitask(htsat22, htsat_args, load_config(MultiTaskConfig, htsat22, htsat_args).run_dir)
    else:
        run("multitask", "fit", "--config", htsat22, *htsat_args)
    log("4/6 CLAP pretraining (configs/experiment/clap2023.yaml + size overrides), interrupted and resumed")
    clap2023, clap_args = str(REPO / "configs/experiment/clap2023.yaml"), overrides("model", "clap2023")
    config = load_config(ExperimentConfig, clap2023, clap_args)
    run_dir = Path(config.run_dir)
    if jobs:
        killed_at = jobs.pretrain_with_a_requeue(clap2023, clap_args, run_dir.resolve())
    else:
        killed_at = pretrain_with_a_kill(clap2023, clap_args, run_dir)
    log("5/6 a tiny captioner on the CLAP's AudioCaps + Clotho training embeddings (configs/rehearsal/captioning.yaml)")
    captioner = train_captioner(run_dir / "checkpoints" / "last.ckpt")
    log("6/6 eval --tasks all --captioner")
    eval_args = ["--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--tasks", "all", "--data", "data/shards",
                 "--num-workers", "0", "--captioner", str(captioner)]
    if jobs:
        jobs.eval(eval_args)
    else:
        run("eval", *eval_args)

    shares = source_shares(run_dir)
    weights = {Path(s.shards).parent.name: s.weight for s in config.data.train_sources}
    total, total_weight = sum(shares.values()), sum(weights.values())
    print(f"\ntraining samples per source over {config.trainer.max_steps} steps (share / configured weight):")
    for source, weight in sorted(weights.items(), key=lambda kv: -kv[1]):
        print(f"  {source:12s} {int(shares.get(source, 0)):6d}  {shares.get(source, 0) / max(total, 1):.4f}"
              f" / {weight / total_weight:.4f}")
    report = run_dir / "eval" / "results.md"
    print("\n" + report.read_text())
    print(f"interrupted at step {killed_at} and resumed to step {config.trainer.max_steps}; "
          f"report: {report}, results.csv, results.png")
    scored = check_report(run_dir / "eval" / "results.csv")
    log(f"done in {time.monotonic() - started:.0f} s; {scored} tasks, every row with a number")
    return 0


def check_report(results_csv: Path) -> int:
    """Stop unless every task of the 26 has a row and every row holds a number (captioning: CIDEr-D etc.)."""
    from clap_lightning.eval.tasks import TASKS

    rows = list(csv.DictReader(results_csv.open()))
    missing = set(TASKS) - {row["task"] for row in rows}
    unscored = sorted({row["task"] for row in rows if not _is_number(row["ours"])})
    if missing or unscored:
        raise SystemExit(f"report {results_csv}: tasks missing {sorted(missing)}, without a number {unscored}")
    return len({row["task"] for row in rows})


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
