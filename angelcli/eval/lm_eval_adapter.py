"""lm-evaluation-harness model type "angel": every harness task on angel's engine (BF16 or FP8 checkpoints).

    python -m angelcli.eval.lm_eval_cli --model angel --model_args model=PATH --device cpu --tasks medqa_4options
    python -c "import angelcli.eval.lm_eval_adapter, lm_eval; lm_eval.simple_evaluate(model='angel', ...)"

lm_eval 0.4 finds model types only in its own registry (lm_eval.api.registry.model_registry: its built-in
MODEL_MAPPING plus whatever was registered with @register_model in this process); it has no entry-point or
plugin hook, so a plain `lm_eval` process never imports angel. Importing this module registers "angel";
angelcli/eval/lm_eval_cli.py does that and then runs lm_eval's own command line unchanged.

model_args: model (path, store name or alias; default angel-tiny), dtype, backend, max_length
(context; default the engine's max_seq_len), batch_size (sequences per forward, lm_eval's --batch_size;
"auto" = 64),
max_gen_toks (256), batch_tokens (padded tokens per forward, 8192). The device comes from lm_eval's
--device (its default cuda:0 falls back to cpu, with a warning, where there is no GPU).

Requests map onto angel as lm-eval's TemplateLM defines them: loglikelihood encodes context and
continuation the same way (TemplateLM._encode_pair) and scores them with angelcli.eval.scorer (batched;
equal to engine.score); loglikelihood_rolling uses lm-eval's rolling windows; generate_until decodes greedily
(or samples when the task sets temperature) through engine.generate_batch and cuts at the first stop string.
"""

from __future__ import annotations

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model


@register_model("angel")
class AngelLM(TemplateLM):
    def __init__(self, model: str | None = None, device: str = "auto", dtype: str = "auto", backend: str = "auto",
                 max_length: int | None = None, batch_size: int | str = 16, max_gen_toks: int = 256,
                 batch_tokens: int = 8192, **_ignored) -> None:
        super().__init__()
        import torch

        from angelcli.runtime import open_runtime

        if str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm_eval passes its --device default (cuda:0) whether or not the user chose it
            from angelcli.console import warn

            warn(f"device {device}: CUDA is not available here; running on cpu (pass --device cpu)")
            device = "cpu"
        self.rt = open_runtime(model or None, device=device, dtype=dtype, backend=backend, max_seq_len=max_length)
        self.tokenizer = self.rt.tokenizer
        self._max_length = self.rt.engine.max_seq_len
        self.batch_size = 64 if str(batch_size).startswith("auto") else max(1, int(batch_size))
        self.max_gen_toks = int(max_gen_toks)
        self.batch_tokens = int(batch_tokens)

    # ---- tokenization (TemplateLM) ----
    @property
    def eot_token_id(self) -> int:
        return int(self.rt.eos_ids[0])

    @property
    def prefix_token_id(self) -> int:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        from angelcli.tokenizer import encode

        return encode(self.tokenizer, string)  # Ling's tokenizer adds no BOS/EOS either way

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---- scoring ----
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        from angelcli.eval.scorer import loglikelihoods

        pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        out: list[tuple[float, bool]] = []
        step = 512  # requests per scorer call (shared contexts are found within it)
        for a in range(0, len(pairs), step):
            res = loglikelihoods(self.rt.engine, pairs[a : a + step], batch_tokens=self.batch_tokens,
                                 max_batch=self.batch_size)
            for req, r in zip(requests[a : a + step], res):
                if req[0] is not None:
                    self.cache_hook.add_partial("loglikelihood", req[0], r)
            out += res
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval import utils

        out = []
        for (string,) in [r.args for r in requests]:
            windows = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows])
            total = sum(s[0] for s in scores)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    # ---- generation ----
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        from angelcli.engine.sampling import SamplingParams

        eos = self.tok_decode([self.eot_token_id])
        jobs = []
        for ctx, gen_kwargs in [r.args for r in requests]:
            kw = normalize_gen_kwargs(dict(gen_kwargs or {}), self.max_gen_toks)
            until = handle_stop_sequences(kw.pop("until", None), eos=eos)
            n = min(int(kw.pop("max_gen_toks")), self.max_length - 1)
            ids = self.tok_encode(ctx)[-(self.max_length - n):] or [self.prefix_token_id]
            temp = float(kw.get("temperature", 0.0) or 0.0) if kw.get("do_sample") else 0.0
            params = SamplingParams(temperature=temp, top_p=float(kw.get("top_p", 1.0) or 1.0),
                                    max_new_tokens=n, stop_ids=tuple(self.rt.eos_ids),
                                    seed=kw.get("seed"))
            jobs.append((ctx, gen_kwargs, ids, params, until))
        out = []
        for a in range(0, len(jobs), self.batch_size):
            group = jobs[a : a + self.batch_size]
            gen: list[list[int]] = [[] for _ in group]
            for i, step in self.rt.engine.generate_batch([j[2] for j in group], [j[3] for j in group]):
                if step.finish_reason != "stop":
                    gen[i].append(step.token_id)
            for (ctx, gk, _, _, until), g in zip(group, gen):
                text = self.tok_decode(g)
                cut = min((text.find(s) for s in until if s and s in text), default=len(text))
                text = text[:cut]
                self.cache_hook.add_partial("generate_until", (ctx, gk), text)
                out.append(text)
        return out

    # ---- chat (--apply_chat_template) ----
    @property
    def tokenizer_name(self) -> str:
        return str(self.rt.model_dir).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        from angelcli.tokenizer import render_chat

        return render_chat(self.tokenizer, chat_history, add_generation_prompt=add_generation_prompt)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template if chat_template else None
