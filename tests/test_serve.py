"""serve.py: the page, /health, /generate's events, OpenAI's API through its own client, concurrency, hang-ups
and bad requests, all against one server on a tiny model; and a headless Chromium on the page."""

import http.client
import json
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict

import pytest
import torch
from conftest import ROOT, assert_clean_error, run_in_process

import tokenizer
from checkpoint import save_checkpoint
from model import Llama, ModelConfig

CYCLE = "Lily:é🙂\n".encode()  # 12 different bytes: 'é' is 2 byte tokens, '🙂' is 4
LIMIT = 100_000  # the server's --max_tokens_limit: high, so that a generation can outlast a test
MAX_REQUESTS = 8
SAMPLED = {"temperature": 1.0, "top_p": 0.95, "top_k": 100, "repetition_penalty": 1.2}


def tiny_checkpoint():
    """A 257-id byte-level model whose likeliest next token goes round 'Lily:é🙂\\n', goes 'Z' -> 'z' -> '.'
    ->
    <|endoftext|>, and from any other token starts the cycle. Its attention and MLP blocks are random, so the
    other tokens' odds depend on the context: sampling at temperature 1 gives varied text."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        dim=264, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=257, hidden_dim=64, max_seq_len=64
    )
    model = Llama(cfg)
    successor = dict(zip(CYCLE, CYCLE[1:] + CYCLE[:1])) | {
        ord("Z"): ord("z"),
        ord("z"): ord("."),
        ord("."): 256,
    }
    with torch.no_grad():
        model.embed_tokens.weight.zero_()
        model.embed_tokens.weight[:, :257] = 10 * torch.eye(
            257
        )  # one direction per token, far above the blocks'
        model.lm_head.weight.zero_()
        for token in range(257):
            model.lm_head.weight[successor.get(token, CYCLE[0]), token] = 0.4
    ranks = {bytes([b]): b for b in range(256)}  # bytes only: every non-ASCII character spans several tokens
    return {
        "model_args": asdict(cfg),
        "model": model.state_dict(),
        "tokenizer": tokenizer.bpe_spec(ranks),
        "iter_num": 7,
        "val_loss": 2.5,
        "val_bpb": 1.25,
    }


def start_server(*args):
    """serve.py on a free port: (process, base URL) once it prints its address."""
    process = subprocess.Popen(
        [sys.executable, "serve.py", "--port=0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = process.stdout.readline()
    assert line.startswith("serving "), line
    return process, line.split()[-1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "tiny"
    path.mkdir()
    save_checkpoint(tiny_checkpoint(), str(path / "ckpt.pt"))
    return path


@pytest.fixture(scope="module")
def server(model_dir):
    process, url = start_server(
        f"--out_dir={model_dir}", f"--max_tokens_limit={LIMIT}", f"--max_requests={MAX_REQUESTS}"
    )
    assert url.startswith("http://127.0.0.1:")  # not reachable from other machines unless asked
    yield url
    process.terminate()
    process.wait(timeout=10)


def connect(url):
    return http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)


def request(url, method, path, body=None):
    """(status, parsed JSON or text) of one request."""
    connection = connect(url)
    connection.request(
        method, path, None if body is None else json.dumps(body), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    kind = response.getheader("Content-Type", "")
    return response.status, json.loads(text) if kind.startswith("application/json") else text


def read_events(response):
    """Yields (event name, data) of a server-sent event stream as the events arrive."""
    name, data = "message", ""
    for line in response:
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif not line:
            yield name, json.loads(data)
            name, data = "message", ""


def open_stream(url, path, body):
    connection = connect(url)
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    assert response.getheader("Content-Type").startswith("text/event-stream")
    return connection, response


def generate(url, **body):
    """/generate's text events, and its final event."""
    connection, response = open_stream(url, "/generate", body)
    events = list(read_events(response))
    connection.close()
    assert [name for name, _ in events[:-1]] == ["message"] * (len(events) - 1) and events[-1][0] == "done"
    return [data["text"] for _, data in events[:-1]], events[-1][1]


def sample_py(model_dir, prompt, max_tokens, seed, **settings):
    """What sample.py prints after the prompt for the same request, without its final newline."""
    result = run_in_process(
        "sample.py",
        f"--out_dir={model_dir}",
        f"--start={prompt}",
        f"--seed={seed}",
        f"--max_new_tokens={max_tokens}",
        *[f"--{k}={v}" for k, v in settings.items()],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(prompt) and result.stdout.endswith("\n")
    return result.stdout[len(prompt) : -1]


def wait_for(condition, seconds=10.0):
    deadline = time.perf_counter() + seconds
    while not condition():
        assert time.perf_counter() < deadline, "timed out"
        time.sleep(0.02)


def in_flight(url):
    return request(url, "GET", "/health")[1]["requests_in_flight"]


# ----------------------------------------------------------------------------- the HTTP surface


def test_health_reports_the_model_and_the_server(server, model_dir):
    status, health = request(server, "GET", "/health")
    assert status == 200 and health["status"] == "ok"
    parameters = Llama(ModelConfig(**tiny_checkpoint()["model_args"])).num_params()
    facts = {
        "id": "tiny",
        "parameters": parameters,
        "context": 64,
        "vocab_size": 257,
        "tokenizer": "bpe",
        "source": str(model_dir / "ckpt.pt"),
        "iter_num": 7,
        "val_loss": 2.5,
        "val_bpb": 1.25,
    }
    assert health["model"].items() >= facts.items()
    assert (health["device"], health["dtype"], health["quantize"]) == ("cpu", "float32", "")
    assert health["requests_in_flight"] == 0
    assert (health["max_tokens_limit"], health["max_requests"]) == (LIMIT, MAX_REQUESTS)


def test_a_quantized_server_says_so_and_serves_the_models_text(model_dir):
    process, url = start_server(f"--out_dir={model_dir}", "--quantize=int8")
    try:
        assert request(url, "GET", "/health")[1]["quantize"] == "int8"
        greedy, _ = generate(url, prompt="Lily", max_tokens=12, temperature=0)
        assert greedy == [":", "é", "🙂", "\n", "L", "i", "l", "y"]
        pieces, _ = generate(url, prompt="Lily", max_tokens=60, seed=5, **SAMPLED)
        assert "".join(pieces) == sample_py(model_dir, "Lily", 60, seed=5, quantize="int8", **SAMPLED)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_page_is_one_self_contained_html_file(server):
    status, page = request(server, "GET", "/")
    assert status == 200 and page.startswith("<!doctype html>")
    for part in (
        'id="prompt"',
        'id="generate"',
        'id="stop"',
        'id="temperature"',
        'id="top_p"',
        'id="top_k"',
        'id="repetition_penalty"',
        'id="max_tokens"',
        'id="seed"',
        'name="viewport"',
    ):
        assert part in page
    assert "//" not in "".join(
        line for line in page.splitlines() if "src=" in line or "href=" in line
    )  # no CDN


@pytest.mark.parametrize(
    "prompt, settings",
    [
        ("Once upon a time", {"temperature": 0}),  # greedy: the cycle, past the 64-token context
        ("Once upon a time", SAMPLED),
        ("Lily and Max play. " * 10, SAMPLED),  # longer than the context: cropped as sample.py crops it
    ],
)
def test_generate_streams_exactly_the_text_sample_py_prints(server, model_dir, prompt, settings):
    pieces, done = generate(server, prompt=prompt, max_tokens=100, seed=5, **settings)
    assert "".join(pieces) == sample_py(model_dir, prompt, 100, seed=5, **settings)
    assert len(pieces) > 10 and done["tokens"] <= 100 and done["seed"] == 5
    assert done["finish_reason"] == ("length" if done["tokens"] == 100 else "eot")
    assert done["seconds"] > 0 and done["tokens_per_s"] > 0 and 0 < done["first_token_s"] <= done["seconds"]
    if len(prompt) > 64:
        assert done["prompt_tokens"] == 63 and "kept its last 63" in done["warning"]
    else:
        assert done["prompt_tokens"] == 1 + len(prompt) and "warning" not in done


def test_a_character_split_over_tokens_arrives_whole_in_one_event(server):
    pieces, done = generate(server, prompt="Lily", max_tokens=12, temperature=0)
    assert pieces == [":", "é", "🙂", "\n", "L", "i", "l", "y"]
    assert (done["tokens"], done["finish_reason"]) == (12, "length")
    pieces, _ = generate(server, prompt="Lily", max_tokens=2, temperature=0)  # ends inside 'é'
    assert pieces == [":", "\ufffd"]  # as sample.py's decoder ends


def test_a_story_ends_at_end_of_text_and_at_a_stop_string(server):
    pieces, done = generate(server, prompt="Z", max_tokens=10, temperature=0)
    assert ("".join(pieces), done["tokens"], done["finish_reason"]) == ("z.", 2, "eot")
    pieces, done = generate(server, prompt="Once", max_tokens=30, temperature=0, stop=["é🙂", "nothing"])
    assert ("".join(pieces), done["finish_reason"]) == ("Lily:", "stop")


def test_an_unseeded_request_gets_a_random_seed_and_says_which(server):
    first, second = (generate(server, prompt="Once", max_tokens=30, **SAMPLED) for _ in range(2))
    assert first[1]["seed"] != second[1]["seed"]
    assert first[0] == generate(server, prompt="Once", max_tokens=30, seed=first[1]["seed"], **SAMPLED)[0]


# ----------------------------------------------------------------------------- OpenAI's client


def test_the_openai_client_gets_sample_py_text_streaming_and_not(server, model_dir):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="none")
    [model] = client.models.list().data
    assert model.id == "tiny"
    expected = sample_py(model_dir, "Once upon a time", 80, seed=9, **SAMPLED)
    fields = dict(
        model=model.id,
        prompt="Once upon a time",
        max_tokens=80,
        seed=9,
        temperature=1.0,
        top_p=0.95,
        extra_body={"top_k": 100, "repetition_penalty": 1.2},
    )
    completion = client.completions.create(**fields)
    assert completion.choices[0].text == expected
    assert completion.usage.prompt_tokens == 17 and completion.usage.completion_tokens <= 80
    chunks = list(client.completions.create(stream=True, **fields))
    assert "".join(chunk.choices[0].text for chunk in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == completion.choices[0].finish_reason
    assert completion.choices[0].finish_reason in ("length", "stop")


def test_the_openai_client_stops_at_stop_strings_and_gets_refusals_as_errors(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="none")
    fields = dict(model="tiny", prompt="Once", max_tokens=30, temperature=0, stop="é🙂")
    assert client.completions.create(**fields).choices[0].text == "Lily:"
    chunks = list(client.completions.create(stream=True, **fields))
    assert (
        "".join(c.choices[0].text for c in chunks) == "Lily:"
        and chunks[-1].choices[0].finish_reason == "stop"
    )
    with pytest.raises(openai.BadRequestError, match="logprobs=2 is not supported"):
        client.completions.create(model="tiny", prompt="Once", logprobs=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens=100001 must be in"):
        client.completions.create(model="tiny", prompt="Once", max_tokens=LIMIT + 1)


# ----------------------------------------------------------------------------- several clients


def test_eight_concurrent_clients_each_get_what_they_would_get_alone(server):
    wait_for(lambda: in_flight(server) == 0)
    bodies = [dict(prompt=f"Story {i}: once", max_tokens=60, seed=i, **SAMPLED) for i in range(8)]
    alone = [generate(server, **body)[0] for body in bodies]
    together, first_text, done_at = [None] * 8, [0.0] * 8, [0.0] * 8
    start = threading.Barrier(8)

    def client(i):
        start.wait()
        connection, response = open_stream(server, "/generate", bodies[i])
        pieces = []
        for name, data in read_events(response):
            if name == "done":
                done_at[i] = time.perf_counter()
            else:
                first_text[i] = first_text[i] or time.perf_counter()
                pieces.append(data["text"])
        together[i] = pieces
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert together == alone
    assert len(set(map(tuple, alone))) == 8
    assert max(first_text) < min(done_at)  # the 8 streams ran at the same time


def test_clients_that_hang_up_or_stop_reading_free_their_place(server):
    """max_requests clients that stop reading (streams) or wait for a whole answer fill the server, and a
    request more is refused. One hanging up frees its place at once, and the others' hang-ups free the rest.
    """
    wait_for(lambda: in_flight(server) == 0)
    waiting = connect(server)  # a whole (not streamed) OpenAI completion: nothing is written before its end
    waiting.request("POST", "/v1/completions", json.dumps({"prompt": "Once", "max_tokens": LIMIT}))
    streams = []
    for i in range(MAX_REQUESTS - 1):
        connection, response = open_stream(server, "/generate", dict(prompt="Once", max_tokens=LIMIT, seed=i))
        assert next(read_events(response))[0] == "message"
        streams.append((connection, response))
    wait_for(lambda: in_flight(server) == MAX_REQUESTS)
    status, refused = request(server, "POST", "/generate", {"prompt": "Once", "max_tokens": 5})
    assert status == 503 and "busy" in refused["error"]
    waiting.close()
    began = time.perf_counter()
    while (status := request(server, "POST", "/generate", {"prompt": "Z", "temperature": 0})[0]) == 503:
        assert time.perf_counter() - began < 3, "a hang-up did not free its place"
        time.sleep(0.02)
    assert status == 200
    for connection, response in streams:
        response.close()
        connection.close()
    wait_for(lambda: in_flight(server) == 0, seconds=5)


# ----------------------------------------------------------------------------- bad requests

OVERSIZED = {"Content-Type": "application/json", "Content-Length": str(2 << 20)}


@pytest.mark.parametrize(
    "method, path, body, status, message",
    [
        ("POST", "/generate", b"{not json", 400, "not valid JSON"),
        ("POST", "/generate", [1, 2], 400, "must be a JSON object"),
        ("POST", "/generate", {"prompt": 5}, 400, "prompt must be a string, not 5"),
        ("POST", "/generate", {"temperature": "hot"}, 400, 'temperature must be a number, not "hot"'),
        ("POST", "/generate", {"temperature": -1}, 400, "temperature=-1.0 must be in [0, 100]"),
        ("POST", "/generate", {"top_p": 0}, 400, "top_p=0.0 must be in (0, 1]"),
        ("POST", "/generate", {"top_k": 2.5}, 400, "top_k must be an integer, not 2.5"),
        ("POST", "/generate", {"max_tokens": True}, 400, "max_tokens must be an integer, not true"),
        ("POST", "/generate", {"max_tokens": 0}, 400, "max_tokens=0 must be in [1, 100000]"),
        ("POST", "/generate", {"max_tokens": LIMIT + 1}, 400, "--max_tokens_limit"),
        ("POST", "/generate", {"repetition_penalty": 0}, 400, "repetition_penalty=0.0 must be in [0.1, 10]"),
        ("POST", "/generate", {"seed": -1}, 400, "seed=-1 must be in"),
        ("POST", "/generate", {"stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4 strings"),
        ("POST", "/generate", {"temprature": 1}, 400, "unknown field 'temprature'"),
        ("POST", "/generate", None, 413, "the limit is 1048576"),
        ("GET", "/generate", None, 405, "/generate takes POST"),
        ("GET", "/nope", None, 404, "no route /nope"),
        ("POST", "/v1/completions", {"prompt": [1, 2]}, 400, "prompt must be a string"),
        ("POST", "/v1/completions", {"prompt": "a", "n": 2}, 400, "n=2 is not supported"),
        ("POST", "/v1/completions", {"prompt": "a", "stream": "yes"}, 400, "stream must be true or false"),
        ("POST", "/v1/chat/completions", {"prompt": "a"}, 404, "no route /v1/chat/completions"),
        ("POST", "/generate", b"[" * 100_000 + b"]" * 100_000, 400, "RecursionError"),  # nested too deep
    ],
)
def test_bad_requests_are_refused_with_a_message(server, method, path, body, status, message):
    connection = connect(server)
    raw = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    connection.request(
        method, path, raw, OVERSIZED if status == 413 else {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    error = json.loads(response.read())["error"]
    connection.close()
    assert response.status == status
    if path.startswith("/v1/"):  # OpenAI's error shape
        assert error["type"] == "invalid_request_error" and message in error["message"]
    else:
        assert message in error


def raw_request(url, data, reset=False):
    """Sends bytes as they are (headers http.client would not write); the status line, or None on a reset."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(data)
        if reset:  # close with a reset (RST), as a client that crashes does
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return None
        return s.recv(4096).split(b"\r\n")[0].decode()


JSON_HEAD = b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def test_a_content_length_that_is_not_a_number_and_a_body_that_is_not_json_are_refused(server):
    assert raw_request(server, JSON_HEAD + "Content-Length: ²\r\n\r\n{}".encode()).startswith("HTTP/1.1 400")
    text = b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}"
    assert raw_request(server, text).startswith("HTTP/1.1 415")
    assert raw_request(server, b"POST /generate HTTP/1.1\r\nHost: x\r\n\r\n").startswith("HTTP/1.1 411")


def test_a_client_resetting_its_connection_leaves_no_traceback(model_dir, tmp_path):
    with open(tmp_path / "err", "w") as err:
        process = subprocess.Popen(
            [sys.executable, "serve.py", "--port=0", f"--out_dir={model_dir}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        url = process.stdout.readline().split()[-1]
        raw_request(url, JSON_HEAD + b"Content-Length: 40\r\n\r\n{", reset=True)  # half a body, then a reset
        raw_request(url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", reset=True)  # a keep-alive, reset
        assert request(url, "GET", "/health")[1]["status"] == "ok"
        process.terminate()
        process.wait(timeout=10)
    assert "Traceback" not in (tmp_path / "err").read_text()


def test_a_temperature_too_small_to_sample_at_is_greedy(server):
    assert (
        generate(server, prompt="Lily", max_tokens=12, temperature=1e-300, seed=3)[0]
        == generate(server, prompt="Lily", max_tokens=12, temperature=0)[0]
    )


def test_the_server_still_answers_after_bad_requests(server):
    assert request(server, "GET", "/health")[1]["status"] == "ok"
    assert generate(server, prompt="Z", temperature=0)[1]["finish_reason"] == "eot"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port=70000"], "--port=70000 must be in [0, 65535]"),
        (["--max_tokens_limit=0"], "--max_tokens_limit=0"),
        (["--device=tpu"], "--device=tpu"),
        (["--out_dir=/nonexistent"], "no checkpoint"),
        (["--quantize=int4"], "--quantize=int4: use '' or bf16 or int8"),
    ],
)
def test_bad_options_fail_with_one_line(args, message):
    assert_clean_error(run_in_process("serve.py", "--port=0", *args), message)


def test_a_busy_port_fails_with_one_line(server, model_dir):
    port = server.rsplit(":", 1)[1]
    assert_clean_error(
        run_in_process("serve.py", f"--out_dir={model_dir}", f"--port={port}"),
        f"cannot listen on 127.0.0.1:{port}: Address already in use",
    )


# ----------------------------------------------------------------------------- a real browser


def chromium():
    """A headless Chromium driven by Selenium, with the system's chromedriver; skips where one is missing."""
    webdriver = pytest.importorskip("selenium.webdriver")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1000,900",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))


def story_text(driver):
    return driver.execute_script("return document.getElementById('text').textContent")


def set_max_tokens(driver, n):
    driver.execute_script(
        "const e = document.getElementById('max_tokens'); e.value = arguments[0];"
        "e.dispatchEvent(new Event('input'));",
        n,
    )


def write_story(driver, url, prompt, max_tokens, seed):
    """Opens the page, types a prompt, sets max tokens and the seed, presses Generate; returns the lengths of
    the text seen while the stream ran."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(lambda: "parameters" in driver.find_element(By.ID, "facts").text)
    driver.find_element(By.ID, "prompt").clear()
    driver.find_element(By.ID, "prompt").send_keys(prompt)
    set_max_tokens(driver, max_tokens)
    driver.find_element(By.ID, "seed").send_keys(str(seed))
    driver.find_element(By.ID, "generate").click()
    lengths = []
    while not driver.find_element(By.ID, "stats").text:
        lengths.append(len(story_text(driver)))
        time.sleep(0.03)
    return lengths


@pytest.mark.slow
def test_a_browser_sees_the_story_grow_then_the_figures_and_can_stop_a_long_one(server, tmp_path):
    from selenium.webdriver.common.by import By

    driver = chromium()
    try:
        lengths = write_story(driver, server, "Once upon a time", 600, 3)
        assert len({n for n in lengths if n}) >= 3  # seen at three lengths while streaming
        stats = driver.find_element(By.ID, "stats").text
        assert "600 tokens" in stats and "tokens/s" in stats and "finish: length" in stats
        assert driver.find_element(By.ID, "echo").text == "Once upon a time"
        driver.save_screenshot(str(tmp_path / "ui.png"))
        assert (tmp_path / "ui.png").stat().st_size > 10_000

        set_max_tokens(driver, LIMIT)
        driver.find_element(By.ID, "generate").click()
        wait_for(lambda: len(story_text(driver)) > 100)
        driver.find_element(By.ID, "stop").click()
        wait_for(lambda: driver.find_element(By.ID, "stats").text == "finish: stopped", seconds=3)
        assert driver.find_element(By.ID, "generate").is_enabled()
        stopped = len(story_text(driver))
        wait_for(lambda: in_flight(server) == 0, seconds=3)  # the server let go of it too
        assert len(story_text(driver)) == stopped

        driver.set_window_size(400, 850)  # a phone: nothing wider than the screen
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        driver.quit()


if (
    __name__ == "__main__"
):  # the README's screenshot: PYTHONPATH=. python tests/test_serve.py out/smoke docs/ui.png
    server_process, server_url = start_server(f"--out_dir={sys.argv[1]}")
    browser = chromium()
    browser.set_window_size(960, 700)
    try:
        write_story(browser, server_url, "Once upon a time", 200, 7)
        browser.save_screenshot(sys.argv[2])
    finally:
        browser.quit()
        server_process.terminate()
