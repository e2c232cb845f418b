"""OpenAI request bodies -> what the engine needs, with OpenAI's error JSON for anything wrong.

    job = parse_chat(body, ctx)        # ChatCompletion request -> Job(prompt_ids, params, stop, ...)
    job = parse_completion(body, ctx)  # Completion request (prompt string or token ids)

Every refusal is an ApiError(status, message, param, code) whose message names the field, rendered as
{"error": {"message", "type", "param", "code"}} as OpenAI does. Unknown fields are ignored (clients send
many); fields angel cannot honour (n > 1, tools, echo, best_of) are refused rather than silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from angelcli.engine.sampling import SamplingParams
from angelcli.errors import UsageError

MAX_STOP = 4
MAX_TOP_LOGPROBS = 20


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or {401: "authentication_error", 404: "invalid_request_error", 503: "server_error",
                             500: "server_error"}.get(status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Context:
    """What parsing needs from the server: the tokenizer, the names it answers to, the context length."""

    tokenizer: object
    model_names: tuple[str, ...]
    max_len: int
    eos_ids: tuple[int, ...]
    vocab_size: int


@dataclass
class Job:
    kind: str  # chat | completion
    model: str
    prompt_ids: list[int]
    prompt_text: str | None
    params: SamplingParams
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False  # report the chosen token's logprob
    start_in_think: bool = False  # chat: the generation prompt already opened <think>


def _num(body: dict, key: str, lo: float, hi: float, default, *, integer: bool = False):
    v = body.get(key)
    if v is None:
        return default
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok:
        raise ApiError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {v!r}", key)
    if not lo <= v <= hi:
        raise ApiError(400, f"'{key}' must be between {lo:g} and {hi:g}, got {v!r}", key)
    return v


def _model(body: dict, ctx: Context) -> str:
    name = body.get("model")
    if name is None:
        return ctx.model_names[0]
    if not isinstance(name, str):
        raise ApiError(400, f"'model' must be a string, got {name!r}", "model")
    if name not in ctx.model_names:
        raise ApiError(404, f"The model '{name}' does not exist (this server serves '{ctx.model_names[0]}')",
                       "model", "model_not_found")
    return name


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "'stop' must be a string or a list of strings", "stop")
    if len(stop) > MAX_STOP:
        raise ApiError(400, f"'stop' takes at most {MAX_STOP} sequences, got {len(stop)}", "stop")
    return [s for s in stop if s]


def _common(body: dict, ctx: Context, prompt_ids: list[int], top_logprobs: int) -> SamplingParams:
    n = _num(body, "n", 1, 1e9, 1, integer=True)
    if n != 1:
        raise ApiError(400, "'n' must be 1 (angel returns one choice per request)", "n")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _num(body, key, 1, 1e12, None, integer=True)
    if len(prompt_ids) >= ctx.max_len or (max_tokens is not None and len(prompt_ids) + max_tokens > ctx.max_len):
        want = len(prompt_ids) + (max_tokens or 1)
        raise ApiError(400, f"This model's maximum context length is {ctx.max_len} tokens; the request needs "
                            f"{want} ({len(prompt_ids)} in the prompt, {max_tokens or 1} to generate)",
                       "messages" if "messages" in body else "prompt", "context_length_exceeded")
    temperature = _num(body, "temperature", 0, 2, 1.0)
    top_p = _num(body, "top_p", 0, 1, 1.0)
    if top_p == 0:
        raise ApiError(400, "'top_p' must be greater than 0", "top_p")
    top_k = _num(body, "top_k", -1, 1e9, 0, integer=True)
    seed = _num(body, "seed", -(2**63), 2**63 - 1, None, integer=True)
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise ApiError(400, "'ignore_eos' must be a boolean", "ignore_eos")
    try:
        return SamplingParams(temperature=float(temperature), top_p=float(top_p), top_k=max(int(top_k), 0),
                              max_new_tokens=max_tokens if max_tokens is not None else ctx.max_len - len(prompt_ids),
                              seed=seed, logprobs=top_logprobs, stop_ids=() if ignore_eos else ctx.eos_ids)
    except UsageError as err:
        raise ApiError(400, str(err).lstrip("-")) from None


def _stream(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    include = bool((opts or {}).get("include_usage", False))
    if opts is not None and not stream:
        raise ApiError(400, "'stream_options' is only allowed when 'stream' is true", "stream_options")
    return stream, include


def _refuse(body: dict, keys: dict[str, str]) -> None:
    for key, why in keys.items():
        v = body.get(key)
        if not (v is None or v is False or v == [] or (type(v) is int and v == 1)):
            raise ApiError(400, f"'{key}' is not supported: {why}", key)


def parse_chat(body, ctx: Context) -> Job:
    from angelcli.messages import normalize_messages

    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = _model(body, ctx)
    if "messages" not in body:
        raise ApiError(400, "'messages' is required", "messages")
    try:
        messages = normalize_messages(body["messages"], "messages")
    except UsageError as err:
        raise ApiError(400, str(err), str(err).split(":")[0]) from None
    _refuse(body, {"tools": "angel does not parse tool calls yet", "best_of": "one choice per request"})
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ApiError(400, "'chat_template_kwargs' must be an object", "chat_template_kwargs")
    logprobs = body.get("logprobs", False)
    if not isinstance(logprobs, bool):
        raise ApiError(400, "'logprobs' must be a boolean", "logprobs")
    top = _num(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, 0, integer=True)
    if top and not logprobs:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
    try:
        text = ctx.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    except Exception as err:  # a template error is the client's input (bad kwargs, bad message order)
        raise ApiError(400, f"the chat template failed on these messages: {err}", "messages") from None
    from angelcli.tokenizer import encode

    ids = encode(ctx.tokenizer, text)
    stream, include = _stream(body)
    params = _common(body, ctx, ids, top if logprobs else 0)
    return Job("chat", model, ids, text, params, _stop(body), stream, include, logprobs,
               start_in_think=text.rstrip().endswith("<think>"))


def parse_completion(body, ctx: Context) -> Job:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = _model(body, ctx)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, "'prompt' is empty", "prompt")
        from angelcli.tokenizer import encode

        ids, text = encode(ctx.tokenizer, prompt), prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
        bad = [i for i in prompt if not 0 <= i < ctx.vocab_size]
        if bad:
            raise ApiError(400, f"'prompt': token id {bad[0]} is outside the vocabulary (0..{ctx.vocab_size - 1})",
                           "prompt")
        ids, text = list(prompt), None
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise ApiError(400, "'prompt': one prompt per request (send several requests; they are batched)", "prompt")
    else:
        raise ApiError(400, "'prompt' must be a string or a list of token ids", "prompt")
    _refuse(body, {"echo": "the prompt is not repeated", "best_of": "one choice per request",
                   "suffix": "no fill-in-the-middle"})
    lp = _num(body, "logprobs", 0, MAX_TOP_LOGPROBS, None, integer=True)
    stream, include = _stream(body)
    params = _common(body, ctx, ids, lp or 0)
    return Job("completion", model, ids, text, params, _stop(body), stream, include, lp is not None)
