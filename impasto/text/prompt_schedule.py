"""AUTOMATIC1111's prompt editing: `[from:to:when]`, `[to:when]`, `[from::when]` and alternation `[a|b|c]`.

`prompt_schedule("a [cat:dog:0.5]", 20)` -> [(10, "a cat"), (20, "a dog")]: the prompt to use up to and
including each sampler step (counted from 0, one per UNet call, as A1111's denoiser counts them). `when` with a
decimal point is a fraction of the steps, without one a step number. `[a|b]` alternates a, b, a, ... from step
to step. Brackets of other forms are emphasis and are left as they are (impasto.text.emphasis reads them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*$")


@dataclass
class _Scheduled:
    before: list
    after: list
    when: float  # the last step (from 1) at which `before` is used


@dataclass
class _Alternate:
    options: list


@dataclass
class _Group:  # emphasis brackets, kept as written
    open: str
    parts: list
    close: str


def _parse(text: str, pos: int, stops: str) -> tuple[list, int, str | None]:
    """Nodes up to the first of `stops` at this level: (nodes, position after it, the stop or None at the end)."""
    nodes, plain = [], []

    def flush():
        if plain:
            nodes.append("".join(plain))
            plain.clear()

    while pos < len(text):
        c = text[pos]
        if c == "\\" and pos + 1 < len(text):
            plain.append(text[pos:pos + 2])
            pos += 2
        elif c in stops:
            flush()
            return nodes, pos + 1, c
        elif c == "(":
            flush()
            inner, pos, stop = _parse(text, pos + 1, ")")
            nodes.append(_Group("(", inner, stop or ""))
        elif c == "[":
            flush()
            node, pos = _bracket(text, pos + 1)
            nodes.append(node)
        else:
            plain.append(c)
            pos += 1
    flush()
    return nodes, pos, None


def _bracket(text: str, pos: int):
    parts, seps = [], []
    while True:
        nodes, pos, stop = _parse(text, pos, "|:]")
        parts.append(nodes)
        if stop in ("|", ":"):
            seps.append(stop)
            continue
        break
    closed = stop == "]"
    if closed and seps and set(seps) == {"|"}:
        return _Alternate(parts), pos
    last = parts[-1]
    if closed and set(seps) == {":"} and len(seps) in (1, 2) and len(last) == 1 and isinstance(last[0], str) \
            and _NUMBER.match(last[0]):
        when = last[0].strip()
        before = parts[0] if len(seps) == 2 else []
        return _Scheduled(before, parts[-2], float(when) if "." in when else int(when)), pos
    joined = parts[0]
    for sep, part in zip(seps, parts[1:]):
        joined = joined + [sep] + part
    return _Group("[", joined, "]" if closed else ""), pos


def _steps(nodes: list, steps: int, out: set):
    for node in nodes:
        if isinstance(node, _Scheduled):
            when = node.when * steps if isinstance(node.when, float) else node.when
            node.when = min(steps, int(when))
            if node.when >= 1:
                out.add(node.when)
            _steps(node.before, steps, out)
            _steps(node.after, steps, out)
        elif isinstance(node, _Alternate):
            out.update(range(1, steps + 1))
            for option in node.options:
                _steps(option, steps, out)
        elif isinstance(node, _Group):
            _steps(node.parts, steps, out)


def _render(nodes: list, step: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            out.append(_render(node.before if step <= node.when else node.after, step))
        elif isinstance(node, _Alternate):
            out.append(_render(node.options[(step - 1) % len(node.options)], step))
        else:
            out.append(node.open + _render(node.parts, step) + node.close)
    return "".join(out)


def prompt_schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """[(last step, prompt), ...] over steps 1..`steps` (one entry when the prompt has no editing)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps: expected a positive int, got {steps!r}")
    nodes = _parse(text, 0, "")[0]
    ends = {steps}
    _steps(nodes, steps, ends)
    out: list[tuple[int, str]] = []
    for end in sorted(ends):
        rendered = _render(nodes, end)
        if out and out[-1][1] == rendered:
            out[-1] = (end, rendered)  # the same prompt on: one entry
        else:
            out.append((end, rendered))
    return out


def has_editing(text: str) -> bool:
    """Whether `text` holds prompt editing or alternation (anything that changes over the steps)."""
    return any(isinstance(n, (_Scheduled, _Alternate)) for n in _walk(_parse(text, 0, "")[0]))


def _walk(nodes):
    for node in nodes:
        yield node
        children = {_Group: lambda n: [n.parts], _Scheduled: lambda n: [n.before, n.after],
                    _Alternate: lambda n: n.options}.get(type(node), lambda n: [])(node)
        for child in children:
            yield from _walk(child)


def schedule_prompts(groups: list, steps: int | None):
    """[(last step, groups rendered for it), ...] for prompt arguments (each a string, a list of strings or None)
    when any of them edits itself over `steps`; None when none does (or steps is unknown)."""
    as_lists = [[g] if isinstance(g, str) else g for g in groups]
    texts = [t for g in as_lists if g for t in g if isinstance(t, str)]
    if steps is None or not any(has_editing(t) for t in texts):
        return None
    schedules = {t: prompt_schedule(t, steps) for t in texts}
    ends = sorted({end for sched in schedules.values() for end, _ in sched})

    def at(text, end):
        return next(rendered for last, rendered in schedules[text] if end <= last)

    def render(group, original, end):
        if group is None:
            return None
        rendered = [at(t, end) for t in group]
        return rendered[0] if isinstance(original, str) else rendered

    return [(end, [render(g, orig, end) for g, orig in zip(as_lists, groups)]) for end in ends]
