"""Blocksworld (PlanBench, 4-operator domain): instances, plans, simulation, verdicts.

Instances come from PDDL problem files or PlanBench's English statements; plans from PDDL
actions ("(unstack a b)") or PlanBench English ("unstack the blue block from on top of the
orange block"). Facts are kept as PDDL strings such as ``(on red blue)`` so a verdict's
unmet preconditions read the same as the domain file.
"""

from __future__ import annotations

import json
import random
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from widen_dag.domains.base import FORMAT_INSTRUCTION, RawRecord, Verdict

name = "blocksworld"

# PlanBench names PDDL objects a, b, c ... by colour in its English prompts.
PLANBENCH_COLORS = dict(
    zip(
        "abcdefghijkl",
        ["red", "blue", "orange", "yellow", "white", "magenta", "black", "cyan", "green", "violet", "silver", "gold"],
        strict=True,
    )
)
ACTIONS = {"pick-up": 1, "put-down": 1, "stack": 2, "unstack": 2}
PREDICATES = {"on": 2, "ontable": 1, "clear": 1, "holding": 1, "handempty": 0}


class BlocksworldError(ValueError):
    """Text that is not a Blocksworld statement or plan; the message names the part."""


@dataclass(frozen=True)
class Action:
    name: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"({self.name} {' '.join(self.args)})"

    def english(self) -> str:
        a = self.args
        return {
            "pick-up": lambda: f"pick up the {a[0]} block",
            "put-down": lambda: f"put down the {a[0]} block",
            "stack": lambda: f"stack the {a[0]} block on top of the {a[1]} block",
            "unstack": lambda: f"unstack the {a[0]} block from on top of the {a[1]} block",
        }[self.name]()


@dataclass(frozen=True)
class Instance:
    blocks: tuple[str, ...]
    init: frozenset[str]
    goal: frozenset[str]

    def statement(self) -> str:
        """The instance in PlanBench's English."""

        def say(fact: str) -> str:
            p = fact.strip("()").split()
            return {
                "clear": lambda: f"the {p[1]} block is clear",
                "ontable": lambda: f"the {p[1]} block is on the table",
                "on": lambda: f"the {p[1]} block is on top of the {p[2]} block",
                "handempty": lambda: "the hand is empty",
                "holding": lambda: f"the hand is holding the {p[1]} block",
            }[p[0]]()

        order = {"clear": 0, "handempty": 1, "holding": 1, "on": 2, "ontable": 3}
        init = [say(f) for f in sorted(self.init, key=lambda f: (order[f.strip("()").split()[0]], f))]
        goal = [say(f) for f in sorted(self.goal)]
        return f"As initial conditions I have that, {_join(init)}.\nMy goal is to have that {_join(goal)}."


@dataclass(frozen=True)
class PlanVerdict:
    valid: bool
    failed_step: int | None = None
    unmet: list[str] = field(default_factory=list)
    detail: str = ""


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _fact(pred: str, *args: str) -> str:
    if pred not in PREDICATES:
        raise BlocksworldError(f"unknown predicate {pred!r} (known: {', '.join(PREDICATES)})")
    if len(args) != PREDICATES[pred]:
        raise BlocksworldError(f"predicate {pred!r} takes {PREDICATES[pred]} argument(s), got {len(args)}")
    return "(" + " ".join([pred, *args]) + ")"


# ---- instances ----------------------------------------------------------------------------
_ATOM_RE = re.compile(r"\(\s*([a-z-]+)((?:\s+[a-z0-9_-]+)*)\s*\)", re.IGNORECASE)


def _section(text: str, key: str) -> str:
    m = re.search(r"\(:" + key + r"\b", text, re.IGNORECASE)
    if not m:
        raise BlocksworldError(f"PDDL problem has no (:{key} ...) section")
    depth, i = 1, m.end()
    while i < len(text) and depth:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    return text[m.end() : i - 1]


def parse_pddl_problem(text: str, colors: bool = True) -> Instance:
    """A PDDL problem file; ``colors`` renames a, b, c ... to PlanBench's colour names."""
    rename = (lambda o: PLANBENCH_COLORS.get(o, o)) if colors else (lambda o: o)
    objects = tuple(rename(o) for o in _section(text, "objects").split())

    def atoms(section: str) -> frozenset[str]:
        out = set()
        for pred, args in _ATOM_RE.findall(section):
            if pred.lower() in ("and", "not"):
                continue
            out.add(_fact(pred.lower(), *[rename(a) for a in args.split()]))
        return frozenset(out)

    return Instance(objects, atoms(_section(text, "init")), atoms(_section(text, "goal")))


_COND_PATTERNS = [
    (re.compile(r"^the (\w+) block is clear$"), lambda m: _fact("clear", m[1])),
    (re.compile(r"^the hand is empty$"), lambda m: _fact("handempty")),
    (re.compile(r"^the (\w+) block is on top of the (\w+) block$"), lambda m: _fact("on", m[1], m[2])),
    (re.compile(r"^the (\w+) block is on the table$"), lambda m: _fact("ontable", m[1])),
    (re.compile(r"^the hand is holding the (\w+) block$"), lambda m: _fact("holding", m[1])),
    (re.compile(r"^i am holding the (\w+) block$"), lambda m: _fact("holding", m[1])),
]


def _conditions(text: str) -> frozenset[str]:
    facts = set()
    for part in re.split(r",\s*(?:and\s+)?|\s+and\s+", text.strip().rstrip(".")):
        part = part.strip().lower()
        if not part:
            continue
        for pattern, make in _COND_PATTERNS:
            m = pattern.match(part)
            if m:
                facts.add(make(m))
                break
        else:
            raise BlocksworldError(f"unrecognised condition {part!r}")
    return frozenset(facts)


def parse_statement(text: str) -> Instance:
    """PlanBench's English statement (the last [STATEMENT] of a prompt, if there are several)."""
    if "[STATEMENT]" in text:
        text = text.rsplit("[STATEMENT]", 1)[1]
    m = re.search(
        r"As initial conditions I have that,?(.*?)My goal is to have that(.*?)(?:\.\s*(?:\n|$)|My plan is|$)",
        text,
        re.DOTALL | re.IGNORECASE,
    )
    if not m:
        raise BlocksworldError("no 'As initial conditions I have that ... My goal is to have that ...' statement found")
    init, goal = _conditions(m.group(1)), _conditions(m.group(2))
    blocks = sorted({a for f in init | goal for a in f.strip("()").split()[1:]})
    return Instance(tuple(blocks), init, goal)


# ---- plans --------------------------------------------------------------------------------
_ENGLISH_ACTIONS = [
    (re.compile(r"^unstack (?:the )?(\w+)(?: block)? from (?:on top of |on )?(?:the )?(\w+)(?: block)?$"), "unstack"),
    (re.compile(r"^stack (?:the )?(\w+)(?: block)? (?:on top of|onto|on) (?:the )?(\w+)(?: block)?$"), "stack"),
    (re.compile(r"^pick up (?:the )?(\w+)(?: block)?$"), "pick-up"),
    (re.compile(r"^put down (?:the )?(\w+)(?: block)?$"), "put-down"),
]
_NUMBERING_RE = re.compile(r"^\s*(?:step\s*)?\d+\s*[.):]\s*|^\s*[-*]\s+", re.IGNORECASE)


def parse_action(line: str) -> Action:
    text = line.strip().rstrip(".").strip().lower()
    if text.startswith("("):
        parts = text.strip("()").split()
        if not parts or parts[0] not in ACTIONS:
            raise BlocksworldError(f"unknown action {parts[0] if parts else text!r}")
        if len(parts) - 1 != ACTIONS[parts[0]]:
            raise BlocksworldError(f"action {parts[0]!r} takes {ACTIONS[parts[0]]} argument(s): {line.strip()!r}")
        return Action(parts[0], tuple(parts[1:]))
    for pattern, action in _ENGLISH_ACTIONS:
        m = pattern.match(text)
        if m:
            return Action(action, tuple(g for g in m.groups()))
    raise BlocksworldError(f"unknown action {line.strip()!r}")


_ACTION_START_RE = re.compile(r"^\(?\s*(?:unstack|stack|pick[- ]up|put[- ]down)\b", re.IGNORECASE)
_CONNECTIVE_RE = re.compile(r"^(?:first(?:ly)?|then|next|after that|finally|now|and)\b\s*,?\s*", re.IGNORECASE)


_RESTART_CUE_RE = re.compile(
    r"\b(wait|actually|mistake|wrong|again|instead|correct(?:ed|ion)?|revised|fix|redo|start over)\b|:\s*$", re.IGNORECASE
)
_STEP_ONE_RE = re.compile(r"^\s*(?:step\s*)?1\s*[.):]", re.IGNORECASE)


def plan_actions(text: str) -> list[Action]:
    """The actions of the LAST complete plan written among prose, as models write it: a line
    that starts with an action verb (after numbering, bullets, bold and 'then,') is a step;
    any other line is chatter and skipped ("Here is the plan:"). A model that drafts a plan and
    then writes a corrected one is graded on the corrected one: a new plan starts where the
    numbering restarts at 1, or after a prose line that announces one ("Wait, that's wrong:",
    "Corrected plan:"); a remark between steps of one plan does not split it. A step line that
    does not parse is an error naming the step; [PLAN END] ends the plan."""
    plans: list[list[Action]] = [[]]
    cue = False
    for raw in text.splitlines():
        line = raw.replace("**", "").replace("`", "").strip()
        end = "[PLAN END]" in line.upper()
        if end:
            line = line[: line.upper().index("[PLAN END]")].strip()
        numbered_one = bool(_STEP_ONE_RE.match(line))
        line = _CONNECTIVE_RE.sub("", _NUMBERING_RE.sub("", line).strip()).strip()
        if line and _ACTION_START_RE.match(line):
            if plans[-1] and (cue or numbered_one):
                plans.append([])
            cue = False
            try:
                plans[-1].append(parse_action(line))
            except BlocksworldError as err:
                raise BlocksworldError(f"step {len(plans[-1]) + 1}: {err}") from None
        elif line and plans[-1] and _RESTART_CUE_RE.search(line):
            cue = True
        if end:
            break
    return next((p for p in reversed(plans) if p), [])


def parse_plan(text: str) -> list[Action]:
    """One action per line; numbering, blank lines and a trailing [PLAN END] are tolerated."""
    actions = []
    for raw in text.splitlines():
        line = raw.strip()
        if "[PLAN END]" in line.upper():
            line = line[: line.upper().index("[PLAN END]")].strip()
            if line:
                actions.append(parse_action(_NUMBERING_RE.sub("", line)))
            break
        line = _NUMBERING_RE.sub("", line).strip()
        if not line or line.upper() == "[PLAN]":
            continue
        actions.append(parse_action(line))
    return actions


# ---- simulation ---------------------------------------------------------------------------
def _step(state: frozenset[str], action: Action) -> tuple[frozenset[str] | None, list[str]]:
    """Apply one action: (new state, []) or (None, unmet preconditions)."""
    a = action.args
    if action.name == "pick-up":
        pre = [_fact("clear", a[0]), _fact("ontable", a[0]), _fact("handempty")]
        add, delete = [_fact("holding", a[0])], [_fact("clear", a[0]), _fact("ontable", a[0]), _fact("handempty")]
    elif action.name == "put-down":
        pre = [_fact("holding", a[0])]
        add, delete = [_fact("clear", a[0]), _fact("handempty"), _fact("ontable", a[0])], [_fact("holding", a[0])]
    elif action.name == "stack":
        pre = [_fact("clear", a[1]), _fact("holding", a[0])]
        add = [_fact("handempty"), _fact("clear", a[0]), _fact("on", a[0], a[1])]
        delete = [_fact("clear", a[1]), _fact("holding", a[0])]
    else:  # unstack
        pre = [_fact("on", a[0], a[1]), _fact("clear", a[0]), _fact("handempty")]
        add = [_fact("holding", a[0]), _fact("clear", a[1])]
        delete = [_fact("on", a[0], a[1]), _fact("clear", a[0]), _fact("handempty")]
    unmet = [p for p in pre if p not in state]
    if unmet:
        return None, unmet
    return frozenset((state - set(delete)) | set(add)), []


def validate(instance: Instance, actions: list[Action]) -> PlanVerdict:
    """Simulate the plan; valid iff every precondition holds and the goal is reached."""
    state = instance.init
    known = set(instance.blocks)
    for i, action in enumerate(actions, start=1):
        strangers = [b for b in action.args if b not in known]
        if strangers:
            return PlanVerdict(False, i, [], f"step {i} {action} names unknown block(s) {', '.join(strangers)}")
        new_state, unmet = _step(state, action)
        if new_state is None:
            return PlanVerdict(False, i, unmet, f"step {i} {action}: unmet {' '.join(unmet)}")
        state = new_state
    missing = sorted(instance.goal - state)
    if missing:
        return PlanVerdict(False, None, missing, f"goal not reached: {' '.join(missing)}")
    return PlanVerdict(True, None, [], "valid plan")


# ---- generator ----------------------------------------------------------------------------
def _towers_to_facts(towers: list[list[str]]) -> frozenset[str]:
    facts = {_fact("handempty")}
    for tower in towers:
        facts.add(_fact("ontable", tower[0]))
        facts.add(_fact("clear", tower[-1]))
        facts.update(_fact("on", up, down) for down, up in zip(tower, tower[1:], strict=False))
    return frozenset(facts)


def _random_towers(blocks: list[str], rng: random.Random) -> list[list[str]]:
    order = blocks[:]
    rng.shuffle(order)
    towers: list[list[str]] = []
    for b in order:
        if towers and rng.random() < 0.5:
            rng.choice(towers).append(b)
        else:
            towers.append([b])
    return towers


def optimal_plan(instance: Instance, max_states: int = 2_000_000) -> list[Action]:
    """Breadth-first search over states: a shortest plan reaching the goal."""
    start = instance.init
    if instance.goal <= start:
        return []
    moves = [Action(n, (x,)) for n in ("pick-up", "put-down") for x in instance.blocks]
    moves += [Action(n, (x, y)) for n in ("stack", "unstack") for x in instance.blocks for y in instance.blocks if x != y]
    parent: dict[frozenset[str], tuple[frozenset[str], Action] | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        for move in moves:
            nxt, _ = _step(state, move)
            if nxt is None or nxt in parent:
                continue
            parent[nxt] = (state, move)
            if instance.goal <= nxt:
                plan = []
                node: frozenset[str] = nxt
                while parent[node] is not None:
                    prev, act = parent[node]  # type: ignore[misc]
                    plan.append(act)
                    node = prev
                return plan[::-1]
            if len(parent) > max_states:
                raise BlocksworldError("state space too large for breadth-first search")
            queue.append(nxt)
    raise BlocksworldError("goal unreachable")


def generate(n_instances: int, n_blocks: int, seed: int) -> list[tuple[Instance, list[Action]]]:
    """Seeded random n-block instances (goal: the `on` facts of a random target) with optimal plans."""
    if not 1 <= n_blocks <= len(PLANBENCH_COLORS):
        raise BlocksworldError(f"n_blocks must be 1..{len(PLANBENCH_COLORS)}, got {n_blocks}")
    rng = random.Random(seed)
    blocks = list(PLANBENCH_COLORS.values())[:n_blocks]
    out = []
    while len(out) < n_instances:
        init = _towers_to_facts(_random_towers(blocks, rng))
        goal = frozenset(f for f in _towers_to_facts(_random_towers(blocks, rng)) if f.startswith("(on "))
        if not goal or goal <= init:
            continue
        instance = Instance(tuple(blocks), init, goal)
        out.append((instance, optimal_plan(instance)))
    return out


# ---- the domain interface -----------------------------------------------------------------
def task_prompt(question: str) -> str:
    return (
        "Solve the following Blocksworld planning problem. "
        f"{FORMAT_INSTRUCTION} Inside <answer> write the plan, one action per line, "
        "e.g. 'unstack the blue block from on top of the orange block'.\n\n"
        f"{question.strip()}"
    )


_THOUGHT_TAG_RE = re.compile(r"</?(?:sub-task|thinking|hypothesis|double-check|reflection|thinking_from_scratch)>")


def plan_text(response: str) -> str | None:
    """The plan part of a response: the <answer> block, else what follows [PLAN], else the
    whole response when it is untagged prose. Tagged thoughts without an answer block hold no
    plan (their deliberation is not one)."""
    m = re.findall(r"<answer>(.*?)(?:</answer>|$)", response, re.DOTALL)
    if m:
        text = m[-1]
    elif "[PLAN]" in response:
        text = response.rsplit("[PLAN]", 1)[1]
    elif _THOUGHT_TAG_RE.search(response):
        return None
    else:
        text = response
    text = re.sub(r"^\s*The answer is:?", "", text.strip(), flags=re.IGNORECASE)
    return text if text.strip() else None


def normalize_gold(gold: str) -> str:
    actions = parse_plan(gold)
    if not actions:
        raise BlocksworldError("gold plan has no actions")
    return "\n".join(str(a) for a in actions)


def verify(response: str, gold: str, question: str | None = None, answer_fallback: bool = False) -> Verdict:
    """Valid plan for the question's instance = correct; the gold plan is only a reference.

    No plan found (no action line at all: prose, a refusal, a cut-off before the plan) is a
    no-answer; a plan with a step that does not parse or cannot be applied is wrong, and the
    detail names the step. A plan has no fallback reading: ``answer_fallback`` is refused by the
    profile for blocksworld sets and ignored here."""
    text = plan_text(response or "")
    if text is None:
        return Verdict(False, True, None, "no plan found")
    try:
        actions = plan_actions(text)
    except BlocksworldError as err:
        return Verdict(False, False, text[:200], f"unparseable plan: {err}")
    if not actions:
        return Verdict(False, True, None, "no plan found: no action lines")
    if question is None:
        raise BlocksworldError("blocksworld verification needs the problem statement")
    verdict = validate(parse_statement(question), actions)
    return Verdict(verdict.valid, False, "\n".join(str(a) for a in actions), verdict.detail)


def records_from_planbench(path: str | Path) -> list[RawRecord]:
    """PlanBench task-1 JSON: the query (rules, one example, the [STATEMENT]) and its plan."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BlocksworldError(f"cannot read PlanBench file {path}: {err}") from None
    rows = data.get("instances") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise BlocksworldError(f"{path}: expected an 'instances' list")
    return records_from_planbench_rows(rows)


def records_from_planbench_rows(
    rows: list, query_field: str = "query", plan_field: str = "ground_truth_plan", id_field: str | None = "instance_id"
) -> list[RawRecord]:
    """PlanBench rows (its JSON export or the hub's table): the [STATEMENT] query and its plan."""
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            out.append(RawRecord(i, None, None, error="row is not an object"))
            continue
        query, plan = row.get(query_field), row.get(plan_field)
        missing = [k for k, v in ((query_field, query), (plan_field, plan)) if not isinstance(v, str)]
        q = query.rstrip() if isinstance(query, str) else None
        if q and q.endswith("[PLAN]"):
            q = q[: -len("[PLAN]")].rstrip()
        if q and q.endswith("My plan is as follows:"):
            q = q[: -len("My plan is as follows:")].rstrip()
        sid = row.get(id_field, i) if id_field else i
        out.append(
            RawRecord(
                i,
                q,
                plan if isinstance(plan, str) else None,
                source_id=str(sid),
                error=f"missing field(s): {', '.join(missing)}" if missing else None,
            )
        )
    return out
