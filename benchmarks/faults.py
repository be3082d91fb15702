"""Fault injection: SIGKILLed training and data preparation, corrupted checkpoints, a full disk, mutated MIDI.

Each fault is checked against an uninterrupted run, and the measured table goes to docs/RELIABILITY.md:

    python benchmarks/faults.py --write_docs          # everything, into docs/RELIABILITY.md (~18 min on 2 busy cores)
    python benchmarks/faults.py --kills 3 --prepare_kills 2 --mutants 20            # a quick look, on stdout
    python benchmarks/faults.py --only corrupt,disk_full                            # some sections only

- train_kills: SIGKILL `train.py` (a tiny model, a checkpoint every few steps, asynchronous saves) at seeded
  random moments, half of them right after an asynchronous save has begun (its Orbax temporary folder has
  appeared), and restart the same command each time; the final parameters and optimizer state must equal an
  uninterrupted run's bit for bit, and every logged loss the uninterrupted run's loss at that step.
- prepare_kills: SIGKILL `data/prepare.py` at seeded random moments (first builds, and `--force` rebuilds over a
  complete dataset) and rerun it: nothing may read as a complete dataset unless it is the finished one, and the
  rerun must give the same manifest, card and examples as an uninterrupted build.
- corrupt: truncate a file, flip bytes, or delete an item of the latest checkpoint and restart: training must
  go on from the previous checkpoint, say so in one line, keep the damaged checkpoint on disk, and end bitwise
  where a clean restart ends.
- disk_full: train on a small tmpfs that fills up before a save, or while one is being written: one clear error
  line, then (space freed) the same command resumes from the last good checkpoint. Needs permission to mount;
  skipped with the reason otherwise.
- mutants: seeded byte flips, cuts and splices of the real MIDI files through `prepare.py`: every file must be
  converted or skipped with a reason in the manifest, within the per-file time limit, and the run must finish.

Relative paths are taken from the repository root. Work happens in a scratch folder under the system's temporary
directory, removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout without `pip install -e .`
os.environ.setdefault("JAX_PLATFORMS", "cpu")

SECTIONS = ("train_kills", "prepare_kills", "corrupt", "disk_full", "mutants")
DATASET = "faults"
TRAIN_OVERRIDES = (
    "model.num_layers=2",
    "model.d_model=32",
    "model.num_heads=4",
    "model.mlp_dim=64",
    "model.max_len=32",
    "train.batch_size=8",
    "train.log_every=1",
    "train.eval_every=100000",
    "train.warmup_steps=2",
    "train.schedule_steps=1000",
)
NORMAL_LINE = re.compile(
    r"^(model: |resumed from |step \d+: validation|train\.py: stopped at step|WARNING:absl:|WARNING: All log)"
)
TMP_MARK = ".orbax-checkpoint-tmp"


# ------------------------------------------------------------------------------------------------- helpers


@dataclasses.dataclass
class Row:
    """One line of the summary table."""

    fault: str
    trials: str
    passed: str
    figures: str


@dataclasses.dataclass
class Section:
    """A section's summary row and its details (Markdown)."""

    rows: list[Row]
    details: str


def repo_path(path: str) -> Path:
    """`path` as given if absolute, else relative to the repository root."""
    return Path(path) if os.path.isabs(path) else REPO / path


def child_env(scratch: Path) -> dict[str, str]:
    """Environment of every child: CPU, one device, a compilation cache shared by all runs of this script."""
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "JAX_COMPILATION_CACHE_DIR": str(scratch / "xla_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start `cmd` in the repository root, in its own process group, stdout and stderr to `log`."""
    with log.open("w") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the process group this script started for `proc`."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def group_alive(pgid: int) -> int:
    """How many processes of process group `pgid` are still running (zombies excluded)."""
    alive = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive += 1
    return alive


def run(cmd: list[str], log: Path, env: dict[str, str], timeout: float) -> tuple[int, str, float]:
    """Run `cmd` to the end: (exit code, its output, seconds); exit code 124 when it ran past `timeout`."""
    began = time.monotonic()
    proc = start(cmd, log, env)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = 124
    kill_group(proc)
    proc.wait()
    return code, log.read_text(errors="replace"), time.monotonic() - began


def odd_lines(output: str, *expected: str) -> list[str]:
    """Lines of a run's output that are neither its normal chatter nor one of the `expected` patterns."""
    return [
        line
        for line in output.splitlines()
        if line.strip() and not NORMAL_LINE.match(line) and not any(re.search(p, line) for p in expected)
    ]


def committed_steps(workdir: Path) -> list[int]:
    """Finished checkpoints (numeric folders) in WORKDIR/checkpoints."""
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def saves_in_flight(workdir: Path) -> set[tuple[str, int]]:
    """(name, inode) of each Orbax temporary folder (a save begun and not finished) in WORKDIR/checkpoints; the
    inode tells a save apart from an earlier one of the same step."""
    try:
        return {(e.name, e.inode()) for e in os.scandir(workdir / "checkpoints") if TMP_MARK in e.name}
    except FileNotFoundError:
        return set()


def logged_losses(workdir: Path, offset: int = 0) -> list[tuple[int, float]]:
    """(step, loss) of each metrics.jsonl line from byte `offset` on."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    with path.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by the kill
        if "loss" in record:
            out.append((int(record["step"]), float(record["loss"])))
    return out


def file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def tree_fingerprint(root: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file under `root`."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------------------- training


@dataclasses.dataclass
class TrainSetup:
    """What every training run of this script shares."""

    scratch: Path
    data_dir: Path
    checkpoint_every: int
    env: dict[str, str]

    def command(self, workdir: Path, steps: int) -> list[str]:
        return [
            sys.executable,
            "train.py",
            "--config",
            "tiny",
            "--workdir",
            str(workdir),
            "--data_dir",
            str(self.data_dir),
            "--dataset",
            DATASET,
            "--steps",
            str(steps),
            "--no_progress",
            *[f"--config.{o}" for o in TRAIN_OVERRIDES],
            f"--config.train.checkpoint_every={self.checkpoint_every}",
        ]

    def shown_command(self, steps: int) -> str:
        """The training command as the table shows it (scratch paths as placeholders)."""
        cmd = self.command(Path("WORKDIR"), steps)[1:]
        cmd[cmd.index("--data_dir") + 1] = "RECORDS"
        return "python " + " ".join(cmd)


def restore_final(workdir: Path) -> tuple[Any, dict, int]:
    """(state, data-iterator state, step) of a workdir's latest checkpoint, restored on one CPU device."""
    from musicgpt_jax import configs
    from musicgpt_jax.orbax_logs import quiet_orbax_notes
    from musicgpt_jax.saved_run import load_config_dict, restore_state

    with quiet_orbax_notes():
        cfg = configs.Config.from_dict(load_config_dict(workdir)[0])
        return restore_state(workdir, cfg)


def bitwise_equal(a: Any, b: Any) -> bool:
    """Same tree structure and every leaf the same dtype, shape and bytes."""
    import jax
    import numpy as np

    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    if tree_a != tree_b:
        return False
    for x, y in zip(leaves_a, leaves_b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return False
    return True


def same_final_state(workdir_a: Path, workdir_b: Path) -> tuple[bool, int, int]:
    """(params, optimizer state, step, RNG and data-iterator state all bitwise equal, step of a, step of b)."""
    state_a, data_a, step_a = restore_final(workdir_a)
    state_b, data_b, step_b = restore_final(workdir_b)
    return bitwise_equal(state_a, state_b) and data_a == data_b and step_a == step_b, step_a, step_b


@dataclasses.dataclass
class Life:
    """One start of train.py in the killed run."""

    index: int
    mode: str  # how it was killed (see plan_kill); "" when it was left to finish
    planned: str  # the kill plan, in words
    newest_at_start: int  # newest finished checkpoint when it started (0: none)
    frontier: int  # furthest step any earlier start reached
    seconds: float = 0.0  # from start to kill (or exit)
    resumed_from: int | None = None  # 0: started from scratch; None: killed before it got that far
    step_reached: int = 0  # last step logged before the kill
    save_in_flight: bool = False  # a save this start had begun was unfinished at the kill
    exit_code: int | None = None
    odd_output: list[str] = dataclasses.field(default_factory=list)

    @property
    def redone(self) -> int:
        """Steps that earlier starts had reached and this one trained again."""
        return max(0, self.frontier - self.resumed_from) if self.resumed_from is not None else 0

    @property
    def lost(self) -> bool:
        """Whether it resumed from an older checkpoint than the newest one there was."""
        return self.resumed_from is not None and self.resumed_from < self.newest_at_start


def plan_kill(rng: random.Random, index: int, startup_s: float) -> tuple[str, int, float]:
    """(mode, k, delay), cycling through the modes: "save" (half the kills) right after the k-th save of this start
    began, plus up to 50 ms; "training" up to 4 s after this start's first step; "anywhere" up to `startup_s` + 4 s
    after the launch (so also during start-up and restore)."""
    mode = ("save", "training", "save", "anywhere")[index % 4]
    if mode == "save":
        return mode, rng.choice((1, 2)), rng.uniform(0.0, 0.05)
    return mode, 0, rng.uniform(0.0, 4.0 if mode == "training" else startup_s + 4.0)


def watch_and_kill(
    proc: subprocess.Popen, workdir: Path, mode: str, nth_save: int, delay: float, seen: set[tuple[str, int]]
) -> tuple[float | None, float | None]:
    """Wait for the planned moment and SIGKILL `proc`: (seconds it ran, or None if it ended first; seconds to its
    first logged step, or None). `seen`: the Orbax temporary folders there before it started."""
    began = time.monotonic()
    seen = set(seen)
    offset = file_size(workdir / "metrics.jsonl")
    fire_at = began + delay if mode == "anywhere" else None
    first_step = None
    while proc.poll() is None:
        now = time.monotonic()
        if first_step is None and file_size(workdir / "metrics.jsonl") > offset:
            first_step = now - began
            if mode == "training":
                fire_at = now + delay
        if fire_at is None and mode == "save":
            fresh = saves_in_flight(workdir) - seen
            seen |= fresh
            nth_save -= len(fresh)
            if nth_save <= 0:
                fire_at = now + delay
        if fire_at is not None and now >= fire_at:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return time.monotonic() - began, first_step
        time.sleep(0.002)
    return None, first_step


def resumed_step(output: str) -> int:
    match = re.search(r"resumed from \S+ at step (\d+)", output)
    return int(match.group(1)) if match else 0


def life_resumed_from(output: str, steps_logged: bool) -> int | None:
    """The step a start resumed from: 0 when it started from scratch, None when it was killed before either."""
    match = re.search(r"resumed from \S+ at step (\d+)", output)
    return int(match.group(1)) if match else 0 if steps_logged else None


def killed_run(setup: TrainSetup, workdir: Path, steps: int, kills: int, seed: int, startup_s: float) -> list[Life]:
    """Start, kill and restart train.py `kills` times, then let the last start finish."""
    rng = random.Random(seed)
    startups = [startup_s]  # seconds from launch to the first step: the reference's, then each start's
    lives: list[Life] = []
    frontier = 0
    for index in range(kills + 1):
        mode, nth, delay = plan_kill(rng, index, min(startups)) if index < kills else ("", 0, 0.0)
        planned = {
            "save": f"save #{nth} began + {delay * 1000:.0f} ms",
            "training": f"first step + {delay:.2f} s",
            "anywhere": f"launch + {delay:.2f} s",
            "": "none",
        }[mode]
        life = Life(index, mode, planned, max(committed_steps(workdir), default=0), frontier)
        offset = file_size(workdir / "metrics.jsonl")
        before = saves_in_flight(workdir)
        log = setup.scratch / f"train_life_{index:02d}.log"
        proc = start(setup.command(workdir, steps), log, setup.env)
        began = time.monotonic()
        ran, first_step = watch_and_kill(proc, workdir, mode, nth, delay, before) if mode else (None, None)
        startups += [first_step] if first_step else []
        if ran is None:  # not planned to die, or finished before its kill
            try:
                life.exit_code = proc.wait(timeout=900)
            except subprocess.TimeoutExpired:
                life.exit_code = 124
            life.seconds = time.monotonic() - began
        else:
            life.seconds = ran
            life.save_in_flight = bool(saves_in_flight(workdir) - before)
        kill_group(proc)
        output = log.read_text(errors="replace")
        logged = [s for s, _ in logged_losses(workdir, offset)]
        life.resumed_from = life_resumed_from(output, bool(logged))
        life.step_reached = max(logged, default=life.resumed_from or 0)
        frontier = max(frontier, life.step_reached)
        life.odd_output = odd_lines(output)
        lives.append(life)
        if ran is None and index < kills:
            break  # it finished: nothing left to kill
    return lives


def losses_match(reference: Path, killed: Path) -> tuple[int, int]:
    """(loss lines of the killed run, how many differ from the reference's loss at the same step)."""
    want = dict(logged_losses(reference))
    got = logged_losses(killed)
    return len(got), sum(1 for step, loss in got if want.get(step) != loss)


def train_kills_section(setup: TrainSetup, args: argparse.Namespace) -> tuple[Section, Path]:
    """Reference run, killed run, comparison; returns the section and the reference workdir (for `corrupt`)."""
    reference = setup.scratch / "train_reference"
    log = setup.scratch / "train_reference.log"
    began = time.monotonic()
    proc = start(setup.command(reference, args.steps), log, setup.env)
    startup_s = None
    while proc.poll() is None:
        if startup_s is None and logged_losses(reference):
            startup_s = time.monotonic() - began
        time.sleep(0.01)
    reference_s = time.monotonic() - began
    if proc.returncode != 0:
        raise SystemExit(f"faults.py: the reference training run failed; see {log}")
    startup_s = startup_s or reference_s
    killed = setup.scratch / "train_killed"
    lives = killed_run(setup, killed, args.steps, args.kills, args.seed, startup_s)
    return summarize_kills(setup, args, reference, killed, lives, (startup_s, reference_s)), reference


def summarize_kills(
    setup: TrainSetup,
    args: argparse.Namespace,
    reference: Path,
    killed: Path,
    lives: list[Life],
    timing: tuple[float, float],
) -> Section:
    kills = [life for life in lives if life.mode]
    final = lives[-1]
    finished = final.exit_code == 0
    equal, step_ref, step_killed = same_final_state(reference, killed) if finished else (False, 0, 0)
    loss_lines, loss_diffs = losses_match(reference, killed)
    restarts = lives[1:]
    resumes = sum(1 for life in restarts if life.resumed_from)
    early = sum(1 for life in restarts if life.resumed_from is None)
    redone = [life.redone for life in restarts]
    lost = sum(life.lost for life in restarts)
    odd = sum(len(life.odd_output) for life in lives)
    in_flight = sum(1 for life in kills if life.save_in_flight)
    # A kill passes when the start after it lost no checkpoint and printed nothing unexpected.
    clean = sum(1 for life in restarts[: len(kills)] if not life.lost and not life.odd_output)
    ok = finished and equal and loss_diffs == 0
    figures = (
        f"{len(kills)} kills ({sum(k.mode == 'save' for k in kills)} right after a save began; {in_flight} with a "
        f"save of their own in flight); {len(restarts)} restarts: {resumes} resumed from a checkpoint, {early} killed "
        f"again before resuming, {len(restarts) - resumes - early} started before any checkpoint existed; "
        f"steps redone {sum(redone)} in all (max {max(redone, default=0)} at one restart); checkpoints lost {lost}; "
        f"final step {step_killed} vs {step_ref}; params + optimizer "
        f"state + RNG + data position bitwise equal: {'yes' if equal else 'NO'}; logged losses equal to the "
        f"uninterrupted run's at the same step: {loss_lines - loss_diffs}/{loss_lines}; unexpected output lines: {odd}"
    )
    row = Row(
        f"SIGKILL of `train.py`, restart with the same command ({args.steps} steps, a checkpoint every "
        f"{setup.checkpoint_every}, asynchronous saves)",
        str(len(kills)),
        f"{clean}/{args.kills}" + ("" if ok else " (final state or losses differ)"),
        figures,
    )
    header = "| start | newest checkpoint | resumed from | redone | kill plan | killed after | step reached | "
    header += "own save in flight |\n|---|---|---|---|---|---|---|---|\n"
    body = ""
    for life in lives:
        end = f"{life.seconds:.1f} s" if life.mode else f"(exit {life.exit_code} after {life.seconds:.1f} s)"
        flight = ("yes" if life.save_in_flight else "no") if life.mode else ""
        resumed = "not yet" if life.resumed_from is None else life.resumed_from
        body += (
            f"| {life.index} | {life.newest_at_start} | {resumed} | {life.redone} | {life.planned} | {end} | "
            f"{life.step_reached} | {flight} |\n"
        )
    details = (
        f"Training command (every start): `{setup.shown_command(args.steps)}`. Uninterrupted: start-up to the "
        f"first step {timing[0]:.1f} s, whole run {timing[1]:.1f} s. Per start: the newest finished checkpoint when "
        "it started, the step it resumed from ('not yet': killed before), the steps earlier starts had reached that "
        f"it trained again, and how it was killed.\n\n{header}{body}"
    )
    if odd:
        details += "\nUnexpected output:\n\n```\n" + "\n".join(line for x in lives for line in x.odd_output) + "\n```\n"
    return Section([row], details)


# ------------------------------------------------------------------------------------------- corrupt checkpoint


def largest_array_file(step_dir: Path) -> Path:
    """The largest file of the state item's array data."""
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"), key=file_size)


def corrupt_truncate(step_dir: Path, rng: random.Random) -> str:
    victim = largest_array_file(step_dir)
    size = file_size(victim)
    victim.write_bytes(victim.read_bytes()[: size // 2])
    return f"{victim.relative_to(step_dir)} cut from {size} to {size // 2} bytes"


def corrupt_flip(step_dir: Path, rng: random.Random) -> str:
    victim = largest_array_file(step_dir)
    data = bytearray(victim.read_bytes())
    where = sorted(rng.sample(range(len(data)), 4))
    for i in where:
        data[i] ^= 0xFF
    victim.write_bytes(bytes(data))
    return f"{victim.relative_to(step_dir)}: 4 bytes inverted at offsets {', '.join(map(str, where))}"


def corrupt_missing_item(item: str) -> Callable[[Path, random.Random], str]:
    def corrupt(step_dir: Path, rng: random.Random) -> str:
        shutil.rmtree(step_dir / item)
        return f"item `{item}` deleted"

    return corrupt


CORRUPTIONS: dict[str, Callable[[Path, random.Random], str]] = {
    "truncated file": corrupt_truncate,
    "flipped bytes (1)": corrupt_flip,
    "flipped bytes (2)": corrupt_flip,
    "missing item (data)": corrupt_missing_item("data"),
    "missing item (config)": corrupt_missing_item("config"),
}


def kept_on_disk(workdir: Path, step: int, fingerprint: dict[str, str]) -> str:
    """Where the damaged checkpoint is now, if it is still there unchanged; '' when it is gone or altered."""
    candidates = [workdir / "checkpoints" / str(step)]
    corrupt_dir = workdir / "corrupt_checkpoints"
    if corrupt_dir.is_dir():
        candidates += sorted(corrupt_dir.iterdir())
    for path in candidates:
        if path.is_dir() and tree_fingerprint(path) == fingerprint:
            return path.relative_to(workdir).as_posix()
    return ""


def corrupt_section(setup: TrainSetup, reference: Path, args: argparse.Namespace) -> Section:
    """Damage the reference run's latest checkpoint in each way and restart for one more checkpoint interval."""
    latest = committed_steps(reference)[-1]
    more = latest + setup.checkpoint_every
    clean = setup.scratch / "corrupt_clean"
    shutil.copytree(reference, clean)
    code, _, _ = run(setup.command(clean, more), setup.scratch / "corrupt_clean.log", setup.env, 900)
    rng = random.Random(args.seed)
    lines, passed = [], 0
    for name, corrupt in CORRUPTIONS.items():
        workdir = setup.scratch / ("corrupt_" + re.sub(r"\W+", "_", name).strip("_"))
        shutil.copytree(reference, workdir)
        how = corrupt(workdir / "checkpoints" / str(latest), rng)
        fingerprint = tree_fingerprint(workdir / "checkpoints" / str(latest))
        rc, output, _ = run(setup.command(workdir, more), workdir.with_suffix(".log"), setup.env, 900)
        said = [
            line
            for line in output.splitlines()
            if f"checkpoints/{latest}" in line and not NORMAL_LINE.match(line)  # (Orbax's warnings are normal)
        ]
        odd = odd_lines(output, re.escape(f"checkpoints/{latest}"))
        resumed = resumed_step(output)
        kept = kept_on_disk(workdir, latest, fingerprint)
        equal = rc == 0 and code == 0 and same_final_state(clean, workdir)[0]
        ok = rc == 0 and resumed == latest - setup.checkpoint_every and len(said) == 1 and not odd and kept and equal
        passed += ok
        caught = "" if not said else "digest" if "does not match the digest" in said[0] else "read error"
        lines.append(
            f"| {name} | {how} | {rc} | {resumed} | {caught} | {len(said)}: `{said[0] if said else ''}` | "
            f"{len(odd)} | {kept or 'NO'} | {'yes' if equal else 'NO'} |"
        )
    row = Row(
        "Latest checkpoint corrupted (truncated file, flipped bytes, missing item), then restart",
        str(len(CORRUPTIONS)),
        f"{passed}/{len(CORRUPTIONS)}",
        f"each: resumed from the previous checkpoint (step {latest - setup.checkpoint_every}), one line about it, "
        f"no other unexpected output, the damaged checkpoint kept unchanged on disk, and the state at step {more} "
        "bitwise equal to a restart from an undamaged copy",
    )
    details = (
        f"Restart command: `{setup.shown_command(more)}` on a copy of the uninterrupted run's workdir (latest "
        f"checkpoint: step {latest}).\n\n"
        "| damage | what | exit | resumed from | caught by | lines about it | other unexpected lines | damaged "
        "checkpoint now at | end state = clean restart's |\n|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(lines)
        + "\n"
    )
    return Section([row], details)


# ------------------------------------------------------------------------------------------------- disk full


def fill_disk(mount: Path, leave: int) -> None:
    """Write a file that leaves `leave` bytes free on the filesystem of `mount`."""
    stat = os.statvfs(mount)
    free = stat.f_bavail * stat.f_frsize
    with (mount / "filler").open("wb") as f:
        f.write(b"\0" * max(0, free - leave))


@dataclasses.dataclass
class FullDiskResult:
    variant: str
    exit_code: int
    error_lines: list[str]
    odd: list[str]
    last_good: int
    resumed: int
    restart_code: int

    @property
    def ok(self) -> bool:
        one_line = len(self.error_lines) == 1 and "space" in self.error_lines[0].lower()
        return (
            self.exit_code not in (0, 124)
            and one_line
            and not self.odd
            and self.restart_code == 0
            and (self.resumed == self.last_good > 0)
        )


def fill_when_a_save_begins(proc: subprocess.Popen, workdir: Path, mount: Path) -> None:
    """Fill the disk as soon as a save after the first finished checkpoint has begun."""
    seen: set[tuple[str, int]] = set()
    while proc.poll() is None:
        done = committed_steps(workdir)
        seen |= saves_in_flight(workdir)
        if done and any(name.split(".")[0] != str(done[0]) for name, _ in seen):
            fill_disk(mount, 64 << 10)
            return
        time.sleep(0.002)


def full_disk_trial(setup: TrainSetup, mount: Path, during_save: bool) -> FullDiskResult:
    """Train on the tmpfs at `mount`: fill it while the second save is being written, or (`during_save` False)
    after a first run left one checkpoint and before the run that continues it saves again."""
    workdir = mount / "run"
    name = "during" if during_save else "before"
    steps = 10 * setup.checkpoint_every
    if not during_save:
        run(setup.command(workdir, setup.checkpoint_every), setup.scratch / "disk_full_first.log", setup.env, 600)
        fill_disk(mount, 64 << 10)
    log = setup.scratch / f"disk_full_{name}.log"
    proc = start(setup.command(workdir, steps), log, setup.env)
    if during_save:
        fill_when_a_save_begins(proc, workdir, mount)
    try:
        code = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        code = 124
    kill_group(proc)
    output = log.read_text(errors="replace")
    last_good = max(committed_steps(workdir), default=0)
    (mount / "filler").unlink()
    errors = [line for line in output.splitlines() if line.startswith("train.py:")]
    rc, again, _ = run(setup.command(workdir, last_good + 1), setup.scratch / f"disk_full_{name}_2.log", setup.env, 600)
    shutil.rmtree(workdir)
    variant = "while a save is being written" if during_save else "before a save (a restart on a full disk)"
    return FullDiskResult(variant, code, errors, odd_lines(output, r"^train\.py: "), last_good, resumed_step(again), rc)


def disk_full_section(setup: TrainSetup, args: argparse.Namespace) -> Section:
    mount = setup.scratch / "small_disk"
    mount.mkdir()
    title = f"Disk full during training ({args.disk_mb} MB tmpfs)"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={args.disk_mb}m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        reason = " ".join((mounted.stderr or mounted.stdout).split()) or f"mount exit {mounted.returncode}"
        return Section([Row(title, "0", "skipped", f"cannot mount a tmpfs: {reason}")], "")
    try:
        results = [full_disk_trial(setup, mount, during) for during in (False, True)]
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    lines = [
        f"| {r.variant} | {r.exit_code} | {len(r.error_lines)}: `{r.error_lines[0] if r.error_lines else ''}` | "
        f"{len(r.odd)} | {r.last_good} | {r.restart_code} | {r.resumed} |"
        for r in results
    ]
    passed = sum(r.ok for r in results)
    row = Row(
        title,
        str(len(results)),
        f"{passed}/{len(results)}",
        "the disk filled before a save, and while one was being written: each time one error line, no traceback, "
        "a non-zero exit, and after freeing space the same command resumed from the last good checkpoint",
    )
    details = (
        "| disk filled | exit | error lines | other unexpected lines | last good checkpoint | restart exit | "
        "restart resumed from |\n|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n"
    )
    odd = [line for r in results for line in r.odd]
    if odd:
        details += "\nUnexpected output:\n\n```\n" + "\n".join(odd[:40]) + "\n```\n"
    return Section([row], details)


# ------------------------------------------------------------------------------------------------- prepare


def prepare_command(midi_dir: Path, data_dir: Path, force: bool = False) -> list[str]:
    cmd = [sys.executable, "data/prepare.py", "--midi_dir", str(midi_dir), "--data_dir", str(data_dir)]
    return cmd + ["--dataset", DATASET, "--workers", "2"] + (["--force"] if force else [])


def dataset_contents(data_dir: Path) -> dict[str, Any] | None:
    """The manifest, card and every example of the dataset, or None when it does not read as complete."""
    from musicgpt_jax import records

    try:
        card = records.load_card(data_dir, DATASET)
    except records.DatasetNotFoundError:
        return None
    examples = {}
    for split, info in card["splits"].items():
        if info["sequences"]:
            source = records.load_split(data_dir, DATASET, split)
            examples[split] = [
                (x["name"], hashlib.sha256(x["states"].tobytes() + x["velocities"].tobytes()).hexdigest())
                for x in (source[i] for i in range(len(source)))
            ]
    manifest = (data_dir / DATASET / records.MANIFEST_FILE).read_text()
    return {"manifest": manifest, "card": card, "examples": examples}


def pick_files(midi_dir: Path, count: int) -> list[Path]:
    files = sorted(p for p in midi_dir.iterdir() if p.suffix.lower() in (".mid", ".midi"))
    if not files:
        raise SystemExit(f"faults.py: no MIDI files in {midi_dir}")
    return files[:count]


def copy_files(files: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for f in files:
        shutil.copy(f, folder / f.name)
    return folder


@dataclasses.dataclass
class PrepareKill:
    index: int
    variant: str
    delay: float
    complete_after_kill: str  # "no", "yes (the finished dataset)", "yes (the old one)", or "YES, different"
    orphans: int
    rerun_code: int
    same: bool
    leftovers: int

    @property
    def ok(self) -> bool:
        return "different" not in self.complete_after_kill and self.rerun_code == 0 and self.same and not self.leftovers


def prepare_kill_trial(
    scratch: Path, midi: Path, reference: dict[str, Any], index: int, delay: float, env: dict[str, str]
) -> PrepareKill:
    """Kill one build (a first build for even `index`, a --force rebuild over a complete copy for odd)."""
    data_dir = scratch / f"prepare_{index:02d}"
    rebuild = index % 2 == 1
    if rebuild:
        shutil.copytree(scratch / "prepare_reference", data_dir)
    cmd = prepare_command(midi, data_dir, force=rebuild)
    proc = start(cmd, scratch / f"prepare_{index:02d}.log", env)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = group_alive(proc.pid)
    kill_group(proc)
    after = dataset_contents(data_dir)
    if after is None:
        state = "no"
    elif after == reference:
        state = "yes (the old one)" if rebuild else "yes (the finished dataset)"
    else:
        state = "YES, different"
    code, _, _ = run(cmd, scratch / f"prepare_{index:02d}_rerun.log", env, 600)
    leftovers = len([p for p in data_dir.iterdir() if p.name.startswith(f".{DATASET}.")])
    variant = "--force rebuild" if rebuild else "first build"
    return PrepareKill(index, variant, delay, state, orphans, code, dataset_contents(data_dir) == reference, leftovers)


def prepare_kills_section(scratch: Path, args: argparse.Namespace, env: dict[str, str]) -> Section:
    midi = copy_files(pick_files(repo_path(args.midi_dir), args.prepare_files), scratch / "prepare_midi")
    code, _, build_s = run(prepare_command(midi, scratch / "prepare_reference"), scratch / "prep_ref.log", env, 600)
    reference = dataset_contents(scratch / "prepare_reference")
    if code != 0 or reference is None:
        raise SystemExit(f"faults.py: the reference build failed; see {scratch / 'prep_ref.log'}")
    rng = random.Random(args.seed)
    trials = [
        prepare_kill_trial(scratch, midi, reference, i, rng.uniform(0.0, build_s), env)
        for i in range(args.prepare_kills)
    ]
    passed = sum(t.ok for t in trials)
    complete = Counter(t.complete_after_kill for t in trials)
    row = Row(
        f"SIGKILL of `data/prepare.py` ({args.prepare_files} files), rerun with the same command",
        str(len(trials)),
        f"{passed}/{len(trials)}",
        f"read as complete right after the kill: {dict(complete)}; rerun: same manifest, card and examples as an "
        f"uninterrupted build {sum(t.same for t in trials)}/{len(trials)}; scratch folders left after the rerun: "
        f"{sum(t.leftovers for t in trials)}; conversion workers still alive 10 s after their parent's kill: "
        f"{sum(t.orphans for t in trials)}",
    )
    lines = [
        f"| {t.index} | {t.variant} | {t.delay:.2f} s | {t.complete_after_kill} | {t.orphans} | {t.rerun_code} | "
        f"{'yes' if t.same else 'NO'} | {t.leftovers} |"
        for t in trials
    ]
    details = (
        f"Command: `python data/prepare.py --midi_dir MIDI --data_dir DIR --dataset {DATASET} --workers 2` (odd trials "
        f"add `--force` over a complete copy of the dataset). Uninterrupted build: {build_s:.1f} s; kills at a "
        "uniform random time within it.\n\n"
        "| trial | build | killed after | reads as complete after the kill | workers alive 10 s later | rerun exit | "
        "same as uninterrupted | scratch folders left |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n"
    )
    return Section([row], details)


# ------------------------------------------------------------------------------------------------- mutants


def mutate(rng: random.Random, data: bytes, other: bytes) -> tuple[str, bytes]:
    """One seeded mutation of a MIDI file's bytes: (kind, new bytes). "value flip" changes data bytes (below
    0x80: pitches, velocities, delta times, tempo and meta values) into others, which mostly keeps the file
    parseable with odd contents; the other kinds mostly break its structure."""
    kind = rng.choice(("flip", "value flip", "value flip", "cut", "splice", "chunk"))
    out = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 32)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return kind, bytes(out)
    if kind == "value flip":
        values = [i for i in range(14, len(out)) if out[i] < 0x80]  # past the header chunk
        for i in rng.sample(values, min(len(values), rng.randint(1, 16))):
            out[i] = rng.randrange(0x80)
        return kind, bytes(out)
    if kind == "cut":
        return kind, data[: rng.randrange(len(data))]
    if kind == "splice":
        return kind, data[: rng.randrange(len(data))] + other[rng.randrange(len(other)) :]
    start, length = rng.randrange(len(data)), rng.randint(1, 512)
    chunk = data[start : start + length]
    if rng.random() < 0.5:
        return "chunk deleted", data[:start] + data[start + length :]
    return "chunk repeated", data[: start + length] + chunk * rng.randint(1, 8) + data[start + length :]


def write_mutants(files: list[Path], folder: Path, count: int, seed: int) -> Counter:
    """`count` mutants of `files` into `folder`; returns how many of each kind."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    blobs = [f.read_bytes() for f in files]
    kinds: Counter = Counter()
    for i in range(count):
        parent, other = rng.randrange(len(blobs)), rng.randrange(len(blobs))
        kind, data = mutate(rng, blobs[parent], blobs[other])
        kinds[kind] += 1
        (folder / f"mutant_{i:03d}_{kind.replace(' ', '_')}.mid").write_bytes(data)
    return kinds


def mutants_section(scratch: Path, args: argparse.Namespace, env: dict[str, str]) -> Section:
    files = pick_files(repo_path(args.midi_dir), 10_000)
    folder = scratch / "mutants"
    kinds = write_mutants(files, folder, args.mutants, args.seed)
    data_dir = scratch / "mutant_records"
    cmd = prepare_command(folder, data_dir) + ["--timeout", str(args.file_timeout)]
    limit = args.mutants * args.file_timeout / 2 + 300  # every file timing out on 2 workers, plus start-up
    code, output, seconds = run(cmd, scratch / "mutants.log", env, limit)
    manifest_path = data_dir / DATASET / "manifest.jsonl"
    entries = [json.loads(line) for line in manifest_path.read_text().splitlines()] if manifest_path.exists() else []
    statuses = Counter(e.get("status", "?") for e in entries)
    reasons = Counter(e.get("reason", "") for e in entries if e.get("status") == "skipped")
    unexplained = [e for e in entries if e.get("status") == "skipped" and not e.get("reason")]
    accounted = statuses["converted"] + statuses["duplicate"] + statuses["skipped"] - len(unexplained)
    odd = odd_lines(output, r"^faults: |^  |^wrote ")
    ok = code == 0 and not odd
    row = Row(
        f"Mutated MIDI files through `data/prepare.py` (per-file limit {args.file_timeout:g} s)",
        str(args.mutants),
        f"{accounted}/{args.mutants}" + ("" if ok else " (the run failed)"),
        f"exit {code} after {seconds:.0f} s; manifest lines {len(entries)}/{args.mutants}: "
        f"{statuses['converted']} converted, {statuses['skipped']} skipped with a reason "
        f"({', '.join(f'{k} {v}' for k, v in reasons.most_common())}), {statuses['duplicate']} duplicates; "
        f"skipped without a reason {len(unexplained)}; unexpected output lines {len(odd)}",
    )
    details = (
        f"Command: `python data/prepare.py --midi_dir MUTANTS --data_dir DIR --dataset {DATASET} --workers 2 "
        f"--timeout {args.file_timeout:g}`. Mutants of the {len(files)} files in `{args.midi_dir}`: "
        f"{', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}.\n"
    )
    if odd:
        details += "\nUnexpected output:\n\n```\n" + "\n".join(odd[:40]) + "\n```\n"
    return Section([row], details)


# ------------------------------------------------------------------------------------------------- report


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True)
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def report(sections: dict[str, Section], command: str, seconds: float) -> str:
    rows = [row for section in sections.values() for row in section.rows]
    table = "| fault | trials | passed | measured |\n|---|---|---|---|\n"
    table += "".join(f"| {r.fault} | {r.trials} | {r.passed} | {r.figures} |\n" for r in rows)
    parts = [
        "# Reliability: fault injection\n",
        "Written by `benchmarks/faults.py` (see its docstring for what each check does). Every figure below comes "
        "from one run of\n",
        f"```\n{command}\n```\n",
        f"on {datetime.date.today().isoformat()}, commit {git_commit()}, {platform.machine()} with "
        f"{os.cpu_count()} cores (shared), in {seconds / 60:.1f} minutes. A section alone: add "
        f"`--only {','.join(SECTIONS)}` (any of them).\n",
        table,
    ]
    titles = {
        "train_kills": "SIGKILL of train.py",
        "prepare_kills": "SIGKILL of data/prepare.py",
        "corrupt": "Corrupted latest checkpoint",
        "disk_full": "Disk full",
        "mutants": "Mutated MIDI files",
    }
    for name, section in sections.items():
        if section.details:
            parts.append(f"## {titles[name]}\n\n{section.details}")
    return "\n".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from musicgpt_jax import cli

    parser = cli.Parser(prog="faults.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--midi_dir", default="../shared/data/midi/real", help="real MIDI files (default: %(default)s)")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of train.py (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=120, help="steps of each training run (default: %(default)s)")
    parser.add_argument("--checkpoint_every", type=int, default=4, help="(default: %(default)s)")
    parser.add_argument("--train_files", type=int, default=12, help="MIDI files in the training set (default: 12)")
    parser.add_argument("--prepare_kills", type=int, default=10, help="SIGKILLs of prepare.py (default: 10)")
    parser.add_argument("--prepare_files", type=int, default=12, help="MIDI files in the killed builds (default: 12)")
    parser.add_argument("--mutants", type=int, default=200, help="mutated MIDI files (default: %(default)s)")
    parser.add_argument("--file_timeout", type=float, default=20.0, help="prepare's per-file limit for mutants")
    parser.add_argument("--disk_mb", type=int, default=16, help="size of the small tmpfs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections (default: all)")
    parser.add_argument("--report", metavar="PATH", help="write the report to PATH (default: stdout)")
    parser.add_argument("--write_docs", action="store_true", help="write the report to docs/RELIABILITY.md")
    parser.add_argument("--out", dest="old_out", help=argparse.SUPPRESS)  # old name of --report
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is printed)")
    args = parser.parse_args(argv)
    if args.old_out:
        cli.deprecated("faults.py", "--out PATH", "--report PATH (or --write_docs)")
        args.report = args.report or args.old_out
    args.out = "docs/RELIABILITY.md" if args.write_docs else (args.report or "-")
    args.only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


@dataclasses.dataclass
class Context:
    scratch: Path
    env: dict[str, str]
    setup: TrainSetup | None = None
    reference: Path | None = None


def training_setup(ctx: Context, args: argparse.Namespace) -> TrainSetup:
    """Build the small training set once (with prepare.py, as a user would)."""
    if ctx.setup is None:
        midi = copy_files(pick_files(repo_path(args.midi_dir), args.train_files), ctx.scratch / "train_midi")
        data_dir = ctx.scratch / "train_records"
        code, _, _ = run(prepare_command(midi, data_dir), ctx.scratch / "train_records.log", ctx.env, 600)
        if code != 0:
            raise SystemExit(f"faults.py: building the training set failed; see {ctx.scratch / 'train_records.log'}")
        ctx.setup = TrainSetup(ctx.scratch, data_dir, args.checkpoint_every, ctx.env)
    return ctx.setup


def reference_run(ctx: Context, args: argparse.Namespace) -> Path:
    """The uninterrupted run (made by `train_kills`, or here when that section is not run)."""
    if ctx.reference is None:
        setup = training_setup(ctx, args)
        ctx.reference = setup.scratch / "train_reference"
        code, _, _ = run(setup.command(ctx.reference, args.steps), setup.scratch / "train_reference.log", ctx.env, 900)
        if code != 0:
            raise SystemExit(f"faults.py: the reference training run failed; see {setup.scratch}")
    return ctx.reference


def run_section(name: str, ctx: Context, args: argparse.Namespace) -> Section:
    if name == "train_kills":
        section, ctx.reference = train_kills_section(training_setup(ctx, args), args)
        return section
    if name == "corrupt":
        return corrupt_section(training_setup(ctx, args), reference_run(ctx, args), args)
    if name == "disk_full":
        return disk_full_section(training_setup(ctx, args), args)
    if name == "prepare_kills":
        return prepare_kills_section(ctx.scratch, args, ctx.env)
    return mutants_section(ctx.scratch, args, ctx.env)


@dataclasses.dataclass
class Scratch:
    keep: bool

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix="musicgpt-faults-"))
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.keep:
            print(f"faults.py: scratch folder kept: {self.path}", file=sys.stderr)
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(["python benchmarks/faults.py", *(sys.argv[1:] if argv is None else argv)])
    began = time.monotonic()
    sections: dict[str, Section] = {}
    with Scratch(args.keep) as scratch:
        ctx = Context(scratch, child_env(scratch))
        for name in [s for s in SECTIONS if s in args.only]:
            print(f"faults.py: {name} ...", file=sys.stderr, flush=True)
            section_began = time.monotonic()
            sections[name] = run_section(name, ctx, args)
            for row in sections[name].rows:
                print(f"faults.py: {name}: {row.passed} in {time.monotonic() - section_began:.0f} s", file=sys.stderr)
    text = report(sections, command, time.monotonic() - began).replace(str(scratch), "SCRATCH")
    if args.out == "-":
        print(text)
    else:
        repo_path(args.out).write_text(text)
        print(f"faults.py: wrote {args.out}", file=sys.stderr)
    passed = [row.passed in (f"{row.trials}/{row.trials}", "skipped") for s in sections.values() for row in s.rows]
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
