from __future__ import annotations

import csv
import io
import json

import pytest

from widen_dag.domains import instruction_following as ifd
from widen_dag.domains.problems import dataset_records, stage_problems
from widen_dag.profiles import DatasetConfig, ProblemsConfig

EN = "the quick brown fox jumps over the lazy dog and then runs far into the green forest to find its friends"
EN_CAPS = EN.upper()

# (instruction id, kwargs, response, strict, loose): written by hand, one that follows and one
# that does not for every instruction lm-eval registers, plus responses only the loose rule accepts.
CASES = [
    ("keywords:existence", {"keywords": ["apple", "river"]}, "I ate an apple by the river.", True, True),
    ("keywords:existence", {"keywords": ["apple", "river"]}, "I ate a pear.", False, False),
    (
        "keywords:frequency",
        {"keyword": "blue", "frequency": 3, "relation": "at least"},
        "blue sky, blue sea, blue eyes",
        True,
        True,
    ),
    ("keywords:frequency", {"keyword": "blue", "frequency": 3, "relation": "at least"}, "a blue sky", False, False),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "A dog barked.", True, True),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "The cat sat.", False, False),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "zebra pizza", True, True),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "apple", False, False),
    ("language:response_language", {"language": "en"}, EN, True, True),
    (
        "language:response_language",
        {"language": "en"},
        "Bonjour, je m'appelle Pierre et j'habite à Paris depuis très longtemps avec ma famille.",
        False,
        False,
    ),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "Only one sentence here.", True, True),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "One. Two. Three.", False, False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First paragraph.\n***\nSecond paragraph.", True, True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "Just one paragraph.", False, False),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "Too few words", True, True),
    (
        "length_constraints:number_words",
        {"num_words": 5, "relation": "less than"},
        "this one has far too many words in it",
        False,
        False,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
        "Intro here.\n\nHowever, this works.",
        True,
        True,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
        "Intro here.\n\nBut not this.",
        False,
        False,
    ),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], we live at [address].", True, True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear friend.", False, False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello there.\nP.S. see you soon", True, True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello there.", False, False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", True, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one", False, False),
    ("detectable_format:constrained_response", {}, "My answer is yes.", True, True),
    ("detectable_format:constrained_response", {}, "Maybe later.", False, False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 1}, "This is *important* text.", True, True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 1}, "Nothing stands out.", False, False),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nfoo\nSection 2\nbar",
        True,
        True,
    ),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}, "foo and bar", False, False),
    ("detectable_format:json_format", {}, '{"a": 1}', True, True),
    ("detectable_format:json_format", {}, 'Here is the JSON:\n{"a": 1}', False, True),  # loose drops the first line
    ("detectable_format:json_format", {}, "not json at all", False, False),
    ("detectable_format:title", {}, "<<My Title>>\nThe body.", True, True),
    ("detectable_format:title", {}, "My Title\nThe body.", False, False),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", True, True),
    ("combination:two_responses", {}, "Only one answer.", False, False),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "Say hi. Hi!", True, True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "Hi!", False, False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", True, True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?\nThanks!", False, True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done.", False, False),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "THIS IS BIG", True, True),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "this is small",
        False,
        False,
    ),
    ("change_case:english_capital", {}, EN_CAPS, True, True),
    ("change_case:english_capital", {}, EN, False, False),
    ("change_case:english_lowercase", {}, EN, True, True),
    ("change_case:english_lowercase", {}, "Sure!\n" + EN, False, True),  # loose drops the capitalised first line
    ("change_case:english_lowercase", {}, EN_CAPS, False, False),
    ("punctuation:no_comma", {}, "No commas here.", True, True),
    ("punctuation:no_comma", {}, "Yes, commas.", False, False),
    ("startend:quotation", {}, '"All of it quoted."', True, True),
    ("startend:quotation", {}, "Not quoted.", False, False),
]


def test_cases_cover_every_supported_instruction():
    assert {c[0] for c in CASES} == set(ifd.supported_instructions())


@pytest.mark.parametrize(
    ("iid", "kwargs", "response", "strict", "loose"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_checkers_agree_with_lm_eval_and_hand_labels(iid, kwargs, response, strict, loose):
    from lm_eval.tasks.ifeval import utils as lm_utils

    prompt = "a request"
    ours = ifd.score(response, ifd.constraints_from([iid], [kwargs]), prompt)
    inp = lm_utils.InputExample(key=0, instruction_id_list=[iid], prompt=prompt, kwargs=[kwargs])
    assert ours.strict == tuple(lm_utils.test_instruction_following_strict(inp, response).follow_instruction_list)
    assert ours.loose == tuple(lm_utils.test_instruction_following_loose(inp, response).follow_instruction_list)
    assert (ours.prompt_strict, ours.prompt_loose) == (strict, loose)


def test_prompt_and_instruction_level_agree_with_lm_eval_on_a_multi_constraint_response():
    from lm_eval.tasks.ifeval import utils as lm_utils

    ids = ["change_case:english_lowercase", "punctuation:no_comma", "startend:end_checker"]
    kwargs = [{}, {}, {"end_phrase": "is there anything else i can help with?"}]
    response = "Sure!\n" + EN + ", is there anything else i can help with?"
    ours = ifd.score(response, ifd.constraints_from(ids, kwargs), "p")
    inp = lm_utils.InputExample(key=0, instruction_id_list=ids, prompt="p", kwargs=kwargs)
    strict, loose = (
        lm_utils.test_instruction_following_strict(inp, response),
        lm_utils.test_instruction_following_loose(inp, response),
    )
    assert ours.strict == tuple(strict.follow_instruction_list) == (False, False, True)
    # loose: without the first line it is lowercase; without the last line ("Sure!") it has no comma
    assert ours.loose == tuple(loose.follow_instruction_list) == (True, True, True)
    assert (
        (ours.prompt_strict, ours.prompt_loose)
        == (strict.follow_all_instructions, loose.follow_all_instructions)
        == (False, True)
    )


def _multi_if_row(**over):
    row = {
        "turns": "",
        "responses": "",
        "key": "k1",
        "turn_index": "0",
        "language": "English",
        "turn_1_prompt": json.dumps({"role": "user", "content": "Describe a fox in lowercase letters only."}),
        "turn_1_instruction_id_list": json.dumps(["change_case:english_lowercase"]),
        "turn_1_kwargs": json.dumps(["{}"]),
        "turn_2_prompt": json.dumps({"role": "user", "content": "End with the phrase: the end."}),
        "turn_2_instruction_id_list": json.dumps(["change_case:english_lowercase", "startend:end_checker"]),
        "turn_2_kwargs": json.dumps(["{}", json.dumps({"end_phrase": "the end."})]),
        "turn_3_prompt": json.dumps({"role": "user", "content": "Do not use any commas."}),
        "turn_3_instruction_id_list": json.dumps(
            ["change_case:english_lowercase", "startend:end_checker", "punctuation:no_comma"]
        ),
        "turn_3_kwargs": json.dumps(["{}", json.dumps({"end_phrase": "the end."}), "{}"]),
    }
    return {**row, **over}


def test_multi_turn_item_scores_each_turn_on_the_constraints_accumulated_so_far():
    recs = ifd.records_from_rows([_multi_if_row()])
    assert [r.meta["turn"] for r in recs] == [1, 2, 3] and not any(r.error for r in recs)
    assert "Describe a fox" in recs[2].question and "End with the phrase" in recs[2].question and "commas" in recs[2].question
    # lowercase and the end phrase, but a comma: turns 1 and 2 pass, turn 3 fails.
    response = f"<thinking>ok</thinking><answer>The answer is: {EN}, the end.</answer>"
    verdicts = [ifd.verify(response, r.gold, r.question) for r in recs]
    assert [v.correct for v in verdicts] == [True, True, False]
    assert json.loads(verdicts[2].detail)["loose"] == [True, True, False]
    # without the end phrase turn 1 alone passes
    assert [ifd.verify(f"<answer>{EN}</answer>", r.gold).correct for r in recs] == [True, False, False]


def test_response_without_answer_block_is_no_answer_unless_the_dataset_allows_the_whole_response():
    gold = ifd.constraints_from(["punctuation:no_comma"], [{}]).to_gold()
    v = ifd.verify("<thinking>no commas here</thinking>", gold)
    assert v.no_answer and not v.correct
    assert ifd.verify("<answer></answer>", gold).no_answer
    fallback = ifd.constraints_from(["punctuation:no_comma"], [{}]).to_gold(answer_fallback=True)
    v = ifd.verify("no commas here", fallback)
    assert v.correct and not v.no_answer
    assert ifd.normalize_gold(fallback) == fallback


def test_multi_if_csv_loads_909_items_and_stages_without_quarantining_good_rows(datasets_dir):
    path = datasets_dir / "multi_if" / "multiIF_20241018_english.csv"
    ds = DatasetConfig.model_validate(
        {"name": "multi_if", "domain": "instruction_following", "role": "eval", "source": {"kind": "file", "path": str(path)}}
    )
    recs = dataset_records(ds, seed=0)
    assert len({r.meta["item"] for r in recs}) == 909
    assert [r.error for r in recs if r.error] == []
    assert {r.meta["turn"] for r in recs} == {1, 2, 3} and len(recs) > 2 * 909
    from widen_dag.domains.problems import load_shard

    staged, quarantine = stage_problems(load_shard(ds, 0, 0), ProblemsConfig(), {"multi_if": "eval"})
    # The only rows held back are exact repeats: conversations that share a first turn.
    assert quarantine.height == 0 or quarantine["reason"].str.starts_with("duplicate of").all()
    assert staged.height + quarantine.height == len(recs)
    assert set(staged["domain"]) == {"instruction_following"}


def test_corrupted_multi_if_copy_quarantines_the_bad_rows_with_reasons(datasets_dir, tmp_path):
    src = (datasets_dir / "multi_if" / "multiIF_20241018_english.csv").read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(src, newline=""))
    rows = [r for _, r in zip(range(8), reader, strict=False)]
    header = reader.fieldnames
    assert header is not None
    rows[1]["turn_1_instruction_id_list"] = json.dumps(["change_case:klingon"])
    rows[1]["turn_1_kwargs"] = json.dumps(["{}"])
    rows[2]["turn_2_kwargs"] = "[not json"
    rows[3]["turn_3_kwargs"] = json.dumps(["{}"])  # one kwargs entry for several instructions
    rows[4]["turn_1_prompt"] = ""
    rows[5]["turn_2_kwargs"] = json.dumps(
        ["{}", json.dumps({"relation": "sideways", "num_words": 3})] + json.loads(rows[5]["turn_2_kwargs"])[2:]
    )
    rows[5]["turn_2_instruction_id_list"] = json.dumps(
        ["change_case:english_lowercase", "length_constraints:number_words"]
        + json.loads(rows[5]["turn_2_instruction_id_list"])[2:]
    )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    text = buf.getvalue() + '"only","three","fields"\n'
    path = tmp_path / "corrupt.csv"
    path.write_text(text, encoding="utf-8")
    ds = DatasetConfig.model_validate(
        {"name": "mif", "domain": "instruction_following", "role": "eval", "source": {"kind": "file", "path": str(path)}}
    )
    from widen_dag.domains.problems import load_shard

    staged, quarantine = stage_problems(load_shard(ds, 0, 0), ProblemsConfig(), {"mif": "eval"})
    reasons = dict(zip(quarantine["row_index"], quarantine["reason"], strict=True))
    assert "unknown instruction id 'change_case:klingon'" in reasons[3]
    assert "turn 2" in reasons[7] and "not JSON" in reasons[7]
    assert "turn 3" in reasons[11] and "one entry per instruction" in reasons[11]
    assert reasons[12] == "turn 1 has no prompt"
    assert "turn 2" in reasons[16] and "sideways" in reasons[16]
    assert "fields, expected" in reasons[24]
    bad = {3, 7, 11, 12, 16, 24}
    assert set(reasons) - bad <= {r for r, why in reasons.items() if why.startswith("duplicate of")}
    # the undamaged turns of damaged items are staged
    staged_turns = {(m["item"], m["turn"]) for m in map(json.loads, staged["meta"])}
    assert {(1, 2), (1, 3), (2, 3), (3, 1), (3, 2), (5, 1), (5, 3)} <= staged_turns  # (2, 1) repeats item 0's first turn


def test_ifeval_jsonl_rows_load_and_bad_ones_carry_reasons(tmp_path):
    lines = [
        json.dumps(
            {"key": 1, "prompt": "Write a haiku without commas.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
        ),
        json.dumps(
            {
                "key": 2,
                "prompt": "Write 3 bullets.",
                "instruction_id_list": ["detectable_format:number_bullet_lists"],
                "kwargs": [{"num_bullets": 3}],
            }
        ),
        json.dumps({"key": 3, "prompt": "x", "instruction_id_list": ["no:such_check"], "kwargs": [{}]}),
        json.dumps({"key": 4, "prompt": "y", "instruction_id_list": ["length_constraints:number_words"], "kwargs": [{}]}),
        "{broken",
    ]
    path = tmp_path / "ifeval.jsonl"
    path.write_text("\n".join(lines) + "\n")
    recs = ifd.records_from_file(path)
    assert [r.error is None for r in recs] == [True, True, False, False, False]
    assert "unknown instruction id 'no:such_check'" in recs[2].error
    assert "kwargs lack num_words" in recs[3].error
    assert recs[4].error.startswith("invalid JSON")
    assert json.loads(recs[1].gold) == {
        "instruction_id_list": ["detectable_format:number_bullet_lists"],
        "kwargs": [{"num_bullets": 3}],
    }


def test_real_profiles_list_multi_if_for_eval_and_the_planning_profile_searches_it_beside_blocksworld():
    from widen_dag.profiles import load_profile

    for name in ("qwen2_5_1_5b_math", "llama3_1_8b_planning", "llama3_1_8b_planning_k8s"):
        multi_if = load_profile(name).dataset("multi_if")
        assert multi_if.domain == "instruction_following" and multi_if.role in ("eval", "split")
        assert multi_if.source.kind == "hub" and multi_if.source.where == {"language": "English"}
    planning = load_profile("llama3_1_8b_planning")
    searched = {d.domain for d in planning.datasets if d.role in ("train", "split")}
    assert {"blocksworld", "instruction_following"} <= searched


def test_hub_source_keeps_only_the_rows_its_where_filter_names(monkeypatch):
    import datasets

    rows = [_multi_if_row(key="en1"), _multi_if_row(key="fr1", language="French")]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: rows)
    ds = DatasetConfig.model_validate(
        {
            "name": "mif",
            "domain": "instruction_following",
            "source": {"kind": "hub", "name": "facebook/Multi-IF", "split": "train", "where": {"language": "English"}},
        }
    )
    recs = dataset_records(ds, seed=0)
    assert {r.source_id for r in recs} == {"en1:turn1", "en1:turn2", "en1:turn3"}


def test_synthetic_requests_load_as_ifeval_rows_and_responses_written_to_them_pass(tmp_path):
    import random

    from widen_dag.domains import synthetic
    from widen_dag.train import instruct

    tasks = synthetic.if_tasks(300, seed=5)
    assert {c.kind for t in tasks for c in t.constraints} == set(synthetic.IF_KINDS)
    assert {len(t.constraints) for t in tasks} == {1, 2}
    path = tmp_path / "ifeval.jsonl"
    path.write_text("".join(json.dumps(t.row(i)) + "\n" for i, t in enumerate(tasks)))
    recs = ifd.records_from_file(path)  # the loader users point at real IFEval files
    assert [r.error for r in recs] == [None] * len(tasks)
    rng = random.Random(0)
    ignored_yet_passed = 0
    for task, rec in zip(tasks, recs, strict=True):
        followed = f"<answer>The answer is: {instruct.if_content(task, rng)}</answer>"
        assert ifd.verify(followed, rec.gold, rec.question).correct, (task.prompt, followed)
        for c in task.constraints:
            ignored = f"<answer>The answer is: {instruct.if_content(task, rng, skip=c.kind)}</answer>"
            ignored_yet_passed += ifd.verify(ignored, rec.gold, rec.question).correct
    # Only IFEval's loose rule (last line dropped: a bulleted answer's comma line) forgives one.
    assert ignored_yet_passed < 0.05 * sum(len(t.constraints) for t in tasks)
    unclosed = instruct.if_response(tasks[0], random.Random(1), 0.0).replace("</answer>", "")
    assert ifd.verify(unclosed, recs[0].gold, recs[0].question).no_answer


def test_the_tiny_profile_generates_its_instruction_following_set_and_tagged_responses_follow_it():
    import random

    from widen_dag.domains import synthetic
    from widen_dag.domains.problems import load_shard
    from widen_dag.profiles import load_profile
    from widen_dag.search.thoughts import is_well_formed
    from widen_dag.train import bootstrap

    profile = load_profile("tiny")
    (dataset,) = [d for d in profile.datasets if d.domain == "instruction_following"]
    rows = load_shard(dataset, 0, profile.seed)
    assert rows.height == dataset.source.n_problems and rows["load_error"].null_count() == rows.height
    assert rows["question"].n_unique() == rows.height
    again = load_shard(dataset, 0, profile.seed)
    assert again["question"].to_list() == rows["question"].to_list()  # seeded: reruns stage the same requests
    rng = random.Random(3)
    tasks = synthetic.if_tasks(200, seed=9)
    followed = [bootstrap.tagged_if_solution(t, rng, 0.0) for t in tasks]
    assert all(is_well_formed(text) for text in followed)
    assert all(ifd.verify(text, t.gold(), t.prompt).correct for t, text in zip(tasks, followed, strict=True))
    ignoring = [bootstrap.tagged_if_solution(t, rng, 1.0) for t in tasks]
    assert sum(ifd.verify(text, t.gold(), t.prompt).correct for t, text in zip(tasks, ignoring, strict=True)) < 0.05 * len(tasks)
    # The plan names every constraint, so the answer is conditioned on it in context.
    assert all(c.brief in text.split("</sub-task>")[0] for t, text in zip(tasks, followed, strict=True) for c in t.constraints)
    plain = bootstrap.student_if_solution(tasks[0], rng, "plain")
    assert ifd.verify(plain, tasks[0].gold(), tasks[0].prompt).no_answer


def test_a_response_langdetect_is_unsure_of_gets_one_verdict_every_time():
    """english_lowercase asks langdetect, whose unseeded guesses for this text were English 30
    times in 50 and Estonian 20: seeded, every scoring of it agrees (and between runs of the demo)."""
    gold = json.dumps({"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]})
    response = "<answer>* 7 + 6 = 14 result is 15 - 6 = 15.</answer>"
    verdicts = {ifd.verify(response, gold).correct for _ in range(30)}
    assert len(verdicts) == 1
