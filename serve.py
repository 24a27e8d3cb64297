"""Serve a model over HTTP: a web page, a streaming /generate API and OpenAI's /v1/completions.

  python serve.py --out_dir=out/smoke                  # then open http://127.0.0.1:7779
  python serve.py --hf_dir=hf/smoke --port=8000 --host=0.0.0.0 --max_tokens_limit=2048

  GET  /                 the page (serve.html: one file, no build step, works offline)
  GET  /health           status, the model's facts, device, dtype, requests in flight
  POST /generate         {prompt, temperature, top_p, top_k, repetition_penalty, max_tokens, seed, stop}:
                         server-sent events {"text": ...}, then `event: done` with the figures
  POST /v1/completions   OpenAI's completions, streaming or not (the openai client works with
  GET  /v1/models        base_url="http://127.0.0.1:7779/v1")

One worker thread owns the model and does all generation. Requests are queued to it and interleaved one token
at a time (round robin), each with its own KV cache and random generator, so each gets exactly the text it
would get alone, which is sample.py's text for the same prompt, seed and settings. Each request's HTTP thread
drains its events to the socket, so a slow client never holds up the worker; a client that hangs up is
cancelled. Standard library only (http.server): nothing to install beyond training's needs.
"""

import codecs
import json
import os
import queue
import random
import select
import socket
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import torch

from configurator import SAMPLING, SAMPLING_CHECKS, check_value, configure, fail
from fastdecode import QUANTIZE, load_for_decoding
from generate import encode_prompt, stream

# -----------------------------------------------------------------------------
out_dir = "out"  # the training run to serve
ckpt = ""  # file in out_dir; '' takes best.pt when it exists, else ckpt.pt
hf_dir = ""  # or a local Hugging Face Llama directory instead
host = "127.0.0.1"  # the address to listen on; 0.0.0.0 lets other machines in
port = 7779  # 0 picks a free port (the address is printed)
device = ""  # '' picks cuda, then mps, then cpu
dtype = ""  # '' picks bfloat16 on CUDA where supported, else float32
max_tokens_limit = 1024  # the most new tokens one request may ask for
max_requests = 64  # requests generating at once; more are answered 503
quantize = ""  # CPU: '', bf16 or int8 (as sample.py's): the matrices in fewer bytes, for speed
compile = None  # the compiled decode step (as sample.py's); True builds it at start
# -----------------------------------------------------------------------------
checks = {
    "port": "[0, 65535]",
    "max_tokens_limit": SAMPLING_CHECKS["max_new_tokens"],
    "max_requests": "[1, inf)",
}
configure(globals(), checks={**checks, "compile": (None, True, False), "quantize": QUANTIZE})

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.html")
BUFFER = 256  # text events a request may have waiting for its client before its generation pauses
MAX_BODY = 1 << 20  # bytes of JSON a request may send
SETTINGS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_tokens", "seed")
GENERATE_FIELDS = ("prompt", *SETTINGS, "stop")
OPENAI_FIELDS = ("model", *GENERATE_FIELDS, "stream", "stream_options", "user")
# OpenAI fields this server does not implement: accepted only with the value that changes nothing
OPENAI_NEUTRAL = {"n": 1, "best_of": 1, "echo": False, "logprobs": None, "logit_bias": None, "suffix": None}
OPENAI_NEUTRAL |= {"presence_penalty": 0, "frequency_penalty": 0}
TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object"}
OPENAI_FINISH = {"eot": "stop", "stop": "stop", "length": "length"}


class ApiError(Exception):
    def __init__(self, status, message, param=None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def read_field(body, name, kind, default):
    """body[name] checked to be of JSON type kind (an integer may stand for a number); default if absent or
    null."""
    value = body.get(name)
    if value is None:
        return default
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:  # type(), not isinstance(): true is not an integer here
        raise ApiError(400, f"{name} must be {TYPE_NAMES[kind]}, not {json.dumps(value)[:40]}", name)
    return value


def held_back(text, stops):
    """How many characters at the end of text could begin a stop string: they wait for the next token."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


class Job:
    """One request. The worker puts its events: ("text", piece)..., then ("done", figures) or ("error",
    message); its HTTP thread takes them."""

    def __init__(self, prompt_ids, settings, warning):
        self.prompt_ids, self.settings, self.warning = prompt_ids, settings, warning
        self.events, self.cancelled = queue.Queue(), threading.Event()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # holds back a split character
        self.text, self.sent, self.count = "", 0, 0  # the text so far, how much of it is sent, tokens
        self.tokens = None  # generate.stream's generator, from the job's first step
        self.began, self.first_token_s = time.perf_counter(), None

    def send_text(self, final):
        """Sends the new text, stopping at a stop string and keeping back what may begin one; True at one."""
        stops = self.settings["stop"]
        hits = [i for i in (self.text.find(s, self.sent) for s in stops) if i >= 0]
        end = min(hits) if hits else len(self.text) - (0 if final else held_back(self.text, stops))
        if end > self.sent:
            self.events.put(("text", self.text[self.sent : end]))
            self.sent = end
        return bool(hits)

    def finish(self, reason):
        seconds = time.perf_counter() - self.began
        figures = {"tokens": self.count, "prompt_tokens": len(self.prompt_ids), "seconds": round(seconds, 4)}
        figures |= {
            "tokens_per_s": round(self.count / seconds, 1),
            "first_token_s": round(self.first_token_s, 4),
        }
        figures |= {"finish_reason": reason, "seed": self.settings["seed"]}
        self.events.put(("done", {**figures, **({"warning": self.warning} if self.warning else {})}))


class Service:
    """The model and its limits: checks requests into jobs, and runs every job in one worker thread that takes
    one token of each active job in turn."""

    def __init__(self, model, enc, step, facts, max_tokens_limit, max_requests):
        self.model, self.enc, self.step, self.facts = model, enc, step, facts
        self.max_tokens_limit, self.max_requests = max_tokens_limit, max_requests
        self.started = int(time.time())
        self.lock = threading.Condition()
        self.incoming, self.in_flight = [], 0
        threading.Thread(target=self.run, daemon=True).start()

    def defaults(self):
        max_tokens = min(SAMPLING["max_new_tokens"], self.max_tokens_limit)
        return {**{k: SAMPLING[k] for k in SETTINGS[:4]}, "max_tokens": max_tokens}

    def health(self):
        server = ("device", "dtype", "quantize")
        model = {k: v for k, v in self.facts.items() if k not in (*server, "spec")}
        limits = {"max_requests": self.max_requests, "max_tokens_limit": self.max_tokens_limit}
        return {
            "status": "ok",
            "model": model,
            **{k: self.facts[k] for k in server},
            **limits,
            "requests_in_flight": self.in_flight,
            "scheduling": "queued and interleaved one token at a time",
            "defaults": self.defaults(),
        }

    def new_job(self, body, openai):
        """The Job a request body asks for, every field checked; ApiError (400) names the first bad one."""
        if not isinstance(body, dict):
            raise ApiError(400, f"the body must be a JSON object, not {json.dumps(body)[:40]}")
        fields = OPENAI_FIELDS if openai else GENERATE_FIELDS
        for name, value in body.items():
            if openai and name in OPENAI_NEUTRAL:
                if value is not None and value != OPENAI_NEUTRAL[name]:
                    only = f"{name}={json.dumps(OPENAI_NEUTRAL[name])}"
                    raise ApiError(
                        400, f"{name}={json.dumps(value)[:40]} is not supported: only {only}", name
                    )
            elif name not in fields:
                raise ApiError(400, f"unknown field {name!r}; supported: {', '.join(fields)}", name)
        defaults = {**self.defaults(), "seed": random.randrange(2**31)}  # unseeded: a new story each time
        settings = {name: read_field(body, name, type(value), value) for name, value in defaults.items()}
        limit = f"[1, {self.max_tokens_limit}]"  # this server's --max_tokens_limit
        for name, value in settings.items():
            problem = check_value(value, limit if name == "max_tokens" else SAMPLING_CHECKS[name])
            if problem:
                limit_note = " (--max_tokens_limit)" if name == "max_tokens" else ""
                raise ApiError(400, f"{name}={value}{problem}{limit_note}", name)
        stop = body.get("stop") or []
        settings["stop"] = [stop] if isinstance(stop, str) else stop
        stops = settings["stop"]
        if not (isinstance(stops, list) and len(stops) <= 4 and all(isinstance(s, str) and s for s in stops)):
            raise ApiError(400, "stop must be a string or a list of at most 4 strings, none empty", "stop")
        prompt = read_field(body, "prompt", str, "")
        prompt_ids, warning = encode_prompt(self.enc, prompt, self.model.config.max_seq_len)  # as sample.py
        return Job(prompt_ids, settings, warning)

    def submit(self, job):
        with self.lock:
            if self.in_flight >= self.max_requests:
                busy = f"{self.max_requests} requests are generating (--max_requests)"
                raise ApiError(503, f"the server is busy: {busy}; try again shortly")
            self.in_flight += 1
            self.incoming.append(job)
            self.lock.notify()

    def run(self):
        active = []
        while True:
            with self.lock:
                while not active and not self.incoming:
                    self.lock.wait()
                active, self.incoming = active + self.incoming, []
            ended, stepped = [], False
            for job in active:
                if job.cancelled.is_set():
                    ended.append(job)
                elif job.events.qsize() < BUFFER:  # else its client is behind: skip it this round
                    stepped = True
                    try:
                        if self.next_token(job):
                            ended.append(job)
                    except Exception as e:  # a failed request must not stop the others
                        traceback.print_exc()
                        job.events.put(("error", f"generation failed: {type(e).__name__}: {e}"))
                        ended.append(job)
            for job in ended:
                if job.tokens is not None:
                    job.tokens.close()
                active.remove(job)
            with self.lock:
                self.in_flight -= len(ended)
            if active and not stepped:  # every client is behind: give them time to read
                time.sleep(0.005)

    def next_token(self, job):
        """Samples job's next token and sends its text; True when the job has finished."""
        s, eot = job.settings, self.enc.eot_token
        if job.tokens is None:
            idx = torch.tensor([job.prompt_ids], device=self.model.embed_tokens.weight.device)
            sampling = [s[k] for k in ("temperature", "top_k", "top_p", "repetition_penalty")]
            job.tokens = stream(self.model, idx, s["max_tokens"], *sampling, eot, s["seed"], step=self.step)
        token = int(next(job.tokens))
        if job.first_token_s is None:
            job.first_token_s = time.perf_counter() - job.began
        if token == eot:
            reason = "eot"
        else:
            job.count += 1
            job.text += job.decoder.decode(self.enc.decode_single_token_bytes(token))
            reason = "length" if job.count == s["max_tokens"] else None
        if reason:
            job.text += job.decoder.decode(b"", final=True)
        if job.send_text(final=reason is not None):
            reason = "stop"
        if reason:
            job.finish(reason)
        return reason is not None


def sse(data, event=None):
    return (f"event: {event}\n" if event else "").encode() + b"data: " + json.dumps(data).encode() + b"\n\n"


class Server(ThreadingHTTPServer):
    request_queue_size = 128  # socketserver's 5 drops connections that arrive together: they retry 1 s later

    def __init__(self, address, service):
        super().__init__(address, Handler)
        self.service = service

    def handle_error(self, request, client_address):
        """A client that resets its connection is nothing to report; anything else is a bug, with its
        traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; streams are sent chunked
    timeout = 60  # seconds a client may leave its socket silent (an idle keep-alive, a stalled reader)

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def route(self, method):
        path = urlsplit(self.path).path
        self.service = self.server.service
        routes = {
            "/": ("GET", self.page),
            "/health": ("GET", lambda: self.send_json(200, self.service.health())),
            "/generate": ("POST", self.generate),
            "/v1/models": ("GET", self.models),
            "/v1/completions": ("POST", self.completions),
        }
        self.started = (
            False  # whether a response has begun: after that an error can only close the connection
        )
        try:
            if path not in routes:
                listed = ", ".join(f"{m} {p}" for p, (m, _) in routes.items())
                raise ApiError(404, f"no route {path}; the routes are {listed}")
            if method != routes[path][0]:
                raise ApiError(405, f"{path} takes {routes[path][0]}, not {method}")
            routes[path][1]()
        except ApiError as e:
            self.send_error_json(e, path.startswith("/v1/"))
        except (ConnectionError, TimeoutError):  # the client reset or stalled: nobody to answer
            self.close_connection = True
        except Exception as e:  # a bug answers 500 and leaves the server up
            traceback.print_exc()
            if self.started:
                self.close_connection = True
            else:
                internal = ApiError(500, f"internal error: {type(e).__name__}: {e}")
                self.send_error_json(internal, path.startswith("/v1/"))

    # ------------------------------------------------------------------------- responses

    def send_json(self, status, data, close=False):
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        self.started = True

    def send_error_json(self, error, openai):
        kind = "invalid_request_error" if error.status < 500 else "server_error"
        detail = {"message": error.message, "type": kind, "param": error.param, "code": None}
        self.send_json(
            error.status, {"error": detail if openai else error.message}, close=True
        )  # start afresh

    def start_stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")  # a proxy in front must not hold the events back
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.started = True

    def send_chunk(self, data):
        """One chunk of a chunked body; b"" ends the body."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def read_json(self):
        kind = self.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        if kind != "application/json":
            raise ApiError(415, f"the body is JSON: send it with Content-Type: application/json, not {kind}")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "send the JSON body with a Content-Length header")
        if not (length.isascii() and length.isdigit()):  # '²' is a digit to str.isdigit, not to int()
            raise ApiError(400, f"Content-Length must be a number of bytes, not {length[:20]!r}")
        if int(length) > MAX_BODY:
            raise ApiError(413, f"the body has {length} bytes; the limit is {MAX_BODY}")
        try:
            return json.loads(self.rfile.read(int(length)))
        except (ValueError, RecursionError) as e:  # also bytes that are not UTF-8, or nesting too deep
            raise ApiError(400, f"the body is not valid JSON ({type(e).__name__}: {str(e)[:100]})")

    # ------------------------------------------------------------------------- a job's events

    def client_gone(self):
        try:
            readable = select.select([self.connection], [], [], 0)[0]
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True

    def events(self, job):
        """The job's events as they come; ConnectionAbortedError once the client has hung up (a response that
        is sent whole writes nothing before the end, so only looking tells)."""
        while True:
            try:
                kind, value = job.events.get(timeout=0.5)
            except queue.Empty:
                kind = None
            if self.client_gone():
                raise ConnectionAbortedError("the client hung up")
            if kind:
                yield kind, value
                if kind != "text":
                    return

    def run_job(self, job, send):
        """Submits job and passes its events to send; a client that goes away cancels it."""
        self.service.submit(job)
        try:
            for kind, value in self.events(job):
                send(kind, value)
        except OSError:  # broken pipe, reset, timeout: nobody is reading any more
            self.close_connection = True
        finally:
            job.cancelled.set()  # frees the worker's share if the job is still running

    # ------------------------------------------------------------------------- routes

    def page(self):
        with open(PAGE, "rb") as f:
            body = f.read()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.started = True

    def generate(self):
        job = self.service.new_job(self.read_json(), openai=False)

        def send(kind, value):
            if not self.started:
                self.start_stream()
            events = {"error": sse({"error": value}, "error"), "done": sse(value, "done")}
            self.send_chunk(events.get(kind) or sse({"text": value}))
            if kind != "text":
                self.send_chunk(b"")

        self.run_job(job, send)

    def models(self):
        model = {"id": self.service.facts["id"], "object": "model", "created": self.service.started}
        self.send_json(200, {"object": "list", "data": [{**model, "owned_by": "tinyllama-stories"}]})

    def completions(self):
        body = self.read_json()
        job = self.service.new_job(body, openai=True)
        streaming = read_field(body, "stream", bool, False)
        options = read_field(body, "stream_options", dict, {})
        if set(options) - {"include_usage"} or not isinstance(options.get("include_usage", False), bool):
            raise ApiError(400, "stream_options takes only include_usage (true or false)", "stream_options")
        read_field(body, "model", str, "")  # any name: this server has one model
        read_field(body, "user", str, "")
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        base["model"] = self.service.facts["id"]

        def completion(text, figures=None):
            """The response, or a streamed piece of it; figures (the job's final event) end it."""
            finish = OPENAI_FINISH[figures["finish_reason"]] if figures else None
            warning = {"warning": figures["warning"]} if figures and "warning" in figures else {}
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [choice], **warning}

        def usage(figures):
            prompt_tokens, tokens = figures["prompt_tokens"], figures["tokens"]
            return {
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": tokens,
                    "total_tokens": prompt_tokens + tokens,
                }
            }

        def send_piece(kind, value):
            if not self.started:
                self.start_stream()
            if kind == "error":
                data = {"error": {"message": value, "type": "server_error", "param": None, "code": None}}
            else:
                data = completion(value) if kind == "text" else completion("", value)
            self.send_chunk(b"data: " + json.dumps(data).encode() + b"\n\n")
            if kind == "done" and options.get("include_usage"):
                self.send_chunk(
                    b"data: " + json.dumps({**base, "choices": [], **usage(value)}).encode() + b"\n\n"
                )
            if kind != "text":
                self.send_chunk(b"data: [DONE]\n\n")
                self.send_chunk(b"")

        pieces = []

        def send_whole(kind, value):
            if kind == "error":
                raise ApiError(500, value)
            if kind == "text":
                pieces.append(value)
            else:
                self.send_json(200, {**completion("".join(pieces), value), **usage(value)})

        self.run_job(job, send_piece if streaming else send_whole)


# ----------------------------------------------------------------------------- start

model, enc, facts, step = load_for_decoding(out_dir, ckpt, hf_dir, device, dtype, quantize, compile)
facts = {"id": os.path.basename(os.path.normpath(hf_dir or out_dir)), **facts, "quantize": quantize}
try:
    server = Server((host, port), Service(model, enc, step, facts, max_tokens_limit, max_requests))
except (OSError, OverflowError) as e:  # a busy port, an unknown host
    fail(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}")
print(f"serving {facts['source']} at http://{host}:{server.server_port}", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    server.server_close()
