"""``stairflow bench``: both modes, interleaved, medians with their spread."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_cli import cli


def test_the_table_compares_the_modes_in_under_a_second_of_virtual_time():
    code, out, err = cli("bench", "moa", "--virtual-clock")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == ("[simulated] moa on simulated: medians of 3 staircase and 3 normal runs, "
                        "[min-max] in brackets")
    rows = {line.split("  ")[0]: line for line in lines[2:]}
    assert rows["TTFT (s)"].split()[2:] == ["0.244", "[0.244-0.244]", "10.576",
                                            "[10.576-10.576]", "0.02"]
    assert rows["LLM calls"].split()[-1] == "2.00"
    # the paper's bound, read from each run's trace: the simulation adds nothing to it
    assert rows["TTFT bound: inputs ready + prefill (s)"].split()[-5:] == [
        "0.244", "[0.244-0.244]", "10.576", "[10.576-10.576]", "0.02"]
    assert rows["TTFT beyond the bound (ms)"].split()[-5:] == [
        "0", "[0-0]", "0", "[0-0]", "-"]
    assert "85.5" in rows["inputs read by the last node (%)"]


def test_json_and_markdown(tmp_path):
    code, out, _ = cli("bench", "moa", "--virtual-clock", "--json", "--repeat", "2")
    assert code == 0
    data = json.loads(out)
    assert data["runs_per_mode"] == {"staircase": 2, "normal": 2} and data["simulated"]
    ttft = data["metrics"]["TTFT"]
    assert ttft["staircase"]["n"] == 2 and ttft["ratio"] < 0.05
    assert set(ttft["normal"]) == {"median", "low", "high", "min", "max", "n"}
    code, out, _ = cli("bench", "moa", "--virtual-clock", "--markdown", "--repeat", "1",
                       "What is rain?", "Why is the sky blue?")
    assert code == 0
    assert "| metric | staircase | normal | staircase / normal |" in out
    assert "medians of 2 staircase and 2 normal runs" in out  # one per prompt


def test_prompts_from_a_file_and_timelines_into_a_directory(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"What is rain?"\n\n{"prompt": "Why is the sea salty?"}\n')
    pictures = tmp_path / "pics"
    pictures.mkdir()
    code, out, err = cli("bench", "moa", "--virtual-clock", "--repeat", "1", "--prompts",
                         str(prompts), "--timeline", str(pictures), "--json")
    assert code == 0, err
    assert json.loads(out)["runs_per_mode"] == {"staircase": 2, "normal": 2}
    assert sorted(p.name for p in pictures.iterdir()) == ["moa-1.png", "moa-2.png"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--repeat", "0"), "--repeat 0: use a whole number >= 1"),
        (("--timeline", "/nonexistent"), "--timeline /nonexistent: not a directory"),
        (("--prompts", "/nonexistent.jsonl"), "--prompts /nonexistent.jsonl: cannot read it"),
        (("--first-chunk", "4,x"), "--first-chunk 4,x: give token counts >= 1"),
        (("--first-chunk", "0"), "--first-chunk 0: give token counts >= 1"),
        (("--context", "grow"), "--context grow: give rebuild, append or both"),
    ],
)
def test_bad_options_are_one_line_errors(args, message):
    code, _, err = cli("bench", "moa", "--virtual-clock", *args)
    assert code == 2
    assert err.startswith(f"stairflow: error: {message}") and err.count("\n") == 1


def test_a_bad_prompt_line_is_named(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"ok"\n{"question": "no prompt key"}\n')
    code, _, err = cli("bench", "moa", "--virtual-clock", "--prompts", str(prompts))
    assert code == 2
    assert err == (f"stairflow: error: {prompts}, line 2: write a JSON string or an object "
                   "with a 'prompt' string\n")


def test_ctrl_c_stops_and_still_prints_what_was_measured(tmp_path, monkeypatch):
    # Ctrl-C in the third run, while an fn node runs (a KeyboardInterrupt the fn raises
    # itself is that node's error; a real SIGINT stops the whole bench)
    (tmp_path / "stopper.py").write_text(
        "import signal\n"
        "RUNS = [0]\n"
        "async def echo(inputs):\n"
        "    RUNS[0] += 1\n"
        "    if RUNS[0] == 3:\n"
        "        signal.raise_signal(signal.SIGINT)\n"
        "        for _ in range(1000):\n"
        "            pass\n"
        "    step = await inputs.collect()\n"
        "    yield step.text['q']\n")
    graph = tmp_path / "g.toml"
    graph.write_text('name = "stop"\ndefault_input = "hi"\n[nodes.q]\nkind = "input"\n'
                     '[nodes.f]\nkind = "fn"\nfn = "stopper:echo"\n[nodes.o]\nkind = "output"\n'
                     '[[edges]]\nfrom = "q"\nto = "f"\n[[edges]]\nfrom = "f"\nto = "o"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = cli("bench", str(graph), "--virtual-clock", "--json")
    assert code == 130
    data = json.loads(out)
    assert data["interrupted"] and data["runs_per_mode"] == {"staircase": 1, "normal": 1}
    # an fn node answers: it sends no request, so there is no bound to give
    assert data["metrics"]["TTFT bound: inputs ready + prefill"]["staircase"] is None
    assert "interrupted; the table holds the runs that finished" in err


def test_sweeps_of_the_first_chunk_and_the_layout():
    code, out, err = cli("bench", "moa", "--virtual-clock", "--repeat", "1", "--json",
                         "--first-chunk", "4,64", "--context", "rebuild,append")
    assert code == 0, err
    runs = json.loads(out)
    assert [r["variant"] for r in runs] == [
        "first chunk 4, context rebuild", "first chunk 4, context append",
        "first chunk 64, context rebuild", "first chunk 64, context append"]
    ttft = {r["variant"]: r["metrics"]["TTFT"]["staircase"]["median"] for r in runs}
    # the first chunk sets TTFT (docs/schedules.md: 0.174 s with 4 tokens, 1.222 s with 64)
    assert round(ttft["first chunk 4, context rebuild"], 3) == 0.174
    assert round(ttft["first chunk 64, context rebuild"], 3) == 1.222
    code, out, _ = cli("bench", "moa", "--virtual-clock", "--repeat", "1", "--first-chunk",
                       "8,16")
    assert out.count("medians of 1 staircase") == 2 and "first chunk 16:\n" in out



def test_a_first_step_cut_to_start_the_final_one_shows_beyond_the_bound(tmp_path):
    # the aggregator's server answers after 2 s: its first step (sent at 0.168 s, when the
    # first chunks were in) is cut when the 20-token proposals end at 0.368 s, and the final
    # step writes the first token; the bound counts from the first chunks, so the cut's
    # 0.2 s shows beyond it
    graph = tmp_path / "cut.toml"
    graph.write_text(
        'name = "cut"\ndefault_input = "Why?"\n[sim]\nlatency_s = 0.05\nprefill_tps = 4000\n'
        'decode_tps = 60\noutput_tokens = 20\n[nodes.q]\nkind = "input"\n'
        '[nodes.p1]\nkind = "llm"\nsim = { seed = 1 }\n[nodes.p2]\nkind = "llm"\n'
        'sim = { seed = 2 }\n[nodes.agg]\nkind = "llm"\nsim = { latency_s = 2.0 }\n'
        '[nodes.out]\nkind = "output"\n[[edges]]\nfrom = "q"\nto = ["p1", "p2"]\n'
        '[[edges]]\nfrom = ["p1", "p2"]\nto = "agg"\n[[edges]]\nfrom = "agg"\nto = "out"\n')
    code, out, err = cli("bench", str(graph), "--virtual-clock", "--repeat", "1", "--json")
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    stair = {k: metrics[k]["staircase"]["median"] for k in
             ("TTFT", "TTFT bound: inputs ready + prefill", "TTFT beyond the bound")}
    assert stair["TTFT"] == pytest.approx(metrics["TTFT"]["normal"]["median"])  # no regret
    assert stair["TTFT beyond the bound"] == pytest.approx(200.0, abs=1.0)
    assert stair["TTFT bound: inputs ready + prefill"] == pytest.approx(
        stair["TTFT"] - 0.2, abs=1e-3)


def test_a_cache_model_and_prices_give_each_modes_cost_per_answer():
    code, out, err = cli("bench", "moa", "--virtual-clock", "--repeat", "1", "--sim",
                         "cache=slot", "--context", "append", "--price", "0.15,0.075,0.60",
                         "--json")
    assert code == 0, err
    data = json.loads(out)
    metrics = {k: tuple(v[m] and v[m]["median"] for m in ("staircase", "normal"))
               for k, v in data["metrics"].items()}
    (prompt, normal_prompt), (cached, _) = metrics["prompt tokens"], metrics["cached prompt tokens"]
    recomputed, normal_recomputed = metrics["prompt tokens recomputed"]
    assert recomputed == prompt - cached and normal_recomputed == normal_prompt
    assert recomputed <= 1.2 * normal_recomputed  # the target, printed
    assert data["price"] == {"recomputed": 0.15, "cached": 0.075, "output": 0.6}
    # the aggregator takes one step in normal mode; in staircase mode its later steps reuse
    later, normal_later = metrics["last node's prompt after its first step, cached"]
    assert normal_later is None and 50 < later < 100
    stair_cost, normal_cost = metrics["cost per 1,000 answers"]
    run = json.loads(cli("run", "moa", "--virtual-clock", "--json", "--sim", "cache=slot")[1])
    assert run["recomputed_tokens"] == run["prompt_tokens"] - run["cached_tokens"]
    assert run["completion_tokens"] == sum(n["completion_tokens"] for n in run["nodes"].values())
    # staircase mode: the proposers are cancelled once the aggregator is done with them
    assert 0 < stair_cost < normal_cost
    code, out, _ = cli("bench", "moa", "--virtual-clock", "--repeat", "1", "--price", "1,1,1")
    assert "cost per 1,000 answers ($)" in out


@pytest.mark.parametrize("price", ["1,2", "a,b,c", "1,2,-3", "1,2,inf"])
def test_a_bad_price_is_a_one_line_error(price):
    code, _, err = cli("bench", "moa", "--virtual-clock", "--price", price)
    assert code == 2 and err.count("\n") == 1
    assert "give three prices in dollars per million tokens" in err
