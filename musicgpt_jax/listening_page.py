"""samples/index.html: one page to look at and listen to a sampling run's pieces.

For each sample its piano roll, an audio player of its WAV, a link to its MIDI and its statistics (from `stats`);
above them the command and the checkpoint that made them, and where a primer was given, where it ends. The page
is self-contained: inline CSS, no scripts, links relative to the page, so it opens from disk or any file server.
Every piece of text is escaped.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from musicgpt_jax import stats
from musicgpt_jax.frames import Frames

PAGE_NAME = "index.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; color: #222; }
pre { background: #f4f4f4; padding: .6em; overflow-x: auto; white-space: pre-wrap; }
section { border-top: 1px solid #ccc; padding: 1em 0; }
img { max-width: 100%; height: auto; display: block; margin: .5em 0; }
audio { width: 100%; }
table { border-collapse: collapse; margin-top: .5em; }
td, th { text-align: left; padding: .15em 1em .15em 0; font-weight: normal; }
th { color: #555; }
.primer { background: #fff6d5; padding: .3em .6em; }
"""


class PageSample(Protocol):
    """What the page needs of a sample (compose.Sample has it): files are `name`.png, .wav and .mid."""

    name: str
    frames: Frames
    prime_frames: int
    renderer: str


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What made the samples: the command and checkpoint, and the primer if one was given."""

    command: str
    workdir: str
    step: int
    dataset: str
    primer: str | None = None
    prime_bars: int = 0
    kept: str | None = None  # a sentence on the notes the model was told to keep (`musicgpt_jax.harmonise`)


def seconds_at(frames: Frames, step: int) -> float:
    """Time of frame `step` in seconds, through the tempo map."""
    tempos = sorted(frames.tempos) or [(0, 120.0)]
    seconds = 0.0
    for i, (start, bpm) in enumerate(tempos):
        end = tempos[i + 1][0] if i + 1 < len(tempos) else step
        seconds += max(0, min(end, step) - start) * 60.0 / (bpm * frames.steps_per_quarter)
    return seconds


def statistics(frames: Frames) -> list[tuple[str, str]]:
    """(label, value) rows of one piece's statistics, as `stats` defines them."""
    s = stats.compute_stats([frames])

    def number(value: float | None, form: str) -> str:
        return "n/a" if value is None else format(value, form)

    pitches = "n/a" if s["pitch_min"] is None else f"MIDI {s['pitch_min']}–{s['pitch_max']}"
    return [
        ("notes", str(s["num_notes"])),
        ("notes per bar", number(s["notes_per_bar"], ".2f")),
        ("polyphony (mean while sounding / max)", f"{number(s['polyphony_mean_sounding'], '.2f')} / "
         f"{number(s['polyphony_max'], 'd')}"),
        ("silent share", number(s["silent_fraction"], ".1%")),
        ("longest silence", f"{number(s['longest_silence_bars'], '.2f')} bars"),
        ("pitch range", pitches),
        ("repeated notes", number(s["repeated_note_fraction"], ".1%")),
    ]  # fmt: skip


def primer_note(sample: PageSample, provenance: Provenance) -> str | None:
    """One sentence on the primer for this sample, or None when none was given."""
    if provenance.primer is None:
        return None
    source = f"primer {provenance.primer} (its last {provenance.prime_bars} bars)"
    if not sample.prime_frames:
        return f"Continues {source}; the primer itself is not in this file."
    lines = sample.frames.meter.bar_lines(sample.prime_frames)
    bar = sum(1 for line in lines if line <= sample.prime_frames)
    return (
        f"Starts with {source}: its first {sample.prime_frames} frames, shaded in the piano roll. The primer ends "
        f"and the model's continuation begins at {seconds_at(sample.frames, sample.prime_frames):.1f} s, in bar {bar}."
    )


def _section(sample: PageSample, provenance: Provenance) -> str:
    e = html.escape
    name = e(sample.name)
    link = {suffix: e(quote(f"{sample.name}{suffix}")) for suffix in (".png", ".wav", ".mid")}
    seconds = seconds_at(sample.frames, sample.frames.num_frames)
    rows = "\n".join(f"<tr><th>{e(label)}</th><td>{e(value)}</td></tr>" for label, value in statistics(sample.frames))
    note = primer_note(sample, provenance)
    primer = f'<p class="primer">{e(note)}</p>' if note else ""
    return f"""<section id="{name}">
<h2>{name}</h2>
{primer}
<img src="{link[".png"]}" alt="piano roll of {name}">
<audio controls preload="auto" src="{link[".wav"]}"></audio>
<p>{seconds:.1f} s · audio by the {e(sample.renderer)} · <a href="{link[".mid"]}">{name}.mid</a></p>
<table>
{rows}
</table>
</section>"""


def render(samples: Sequence[PageSample], provenance: Provenance) -> str:
    """The page's HTML."""
    e = html.escape
    title = f"Samples of {provenance.workdir}, step {provenance.step}"
    sections = "\n".join(_section(sample, provenance) for sample in samples)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{e(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{e(title)}</h1>
<p>Checkpoint: step {provenance.step} of <code>{e(provenance.workdir)}</code>, trained on
<code>{e(provenance.dataset)}</code>. Made by:</p>
<pre><code>{e(provenance.command)}</code></pre>
{f'<p class="primer">{e(provenance.kept)}</p>' if provenance.kept else ""}
{sections}
</body>
</html>
"""


def write_page(folder: str | Path, samples: Sequence[PageSample], provenance: Provenance) -> Path:
    """Write `folder`/index.html (beside the samples' files); returns its path."""
    path = Path(folder) / PAGE_NAME
    path.write_text(render(samples, provenance), encoding="utf-8")
    return path
