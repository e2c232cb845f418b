"""Target features for draft training: online (one frozen target forward per batch) or cached on disk.

Online is the default: nothing is stored (for AntAngelMed a feature dump costs 32 KB per token in bf16,
about 3.3 TB per 100 M tokens, spec eagle3.md §2.2). `--cache-features DIR` stores, per sample, the three
aux states and the last layer's residual stream, in the target's dtype, and recomputes the teacher logits
with the target's frozen final norm and lm_head, the same operations as the forward itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from angelcli.console import log
from angelcli.errors import ResourceError, UsageError


@torch.no_grad()
def target_features(model, ids: torch.Tensor, aux_layers, with_last: bool = False):
    """ids [B, T] -> (aux [B, T, 3Ht] low|mid|high, logits [B, T, V] fp32) [+ last residual [B, T, Ht]]."""
    N = model.config.num_hidden_layers
    layers = tuple(sorted(set(aux_layers) | ({N - 1} if with_last else set())))
    out = model(ids, capture_layers=layers)
    aux = torch.cat([out.hidden[i] for i in aux_layers], -1)
    if with_last:
        return aux, out.logits, out.hidden[N - 1]
    return aux, out.logits


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


class FeatureCache:
    """DIR/index.json (what the features belong to) + DIR/<sample>.safetensors {aux, last, ids}."""

    def __init__(self, directory: Path, rt, aux_layers, key: dict):
        self.dir = Path(directory)
        self.rt, self.aux_layers = rt, tuple(aux_layers)
        self.key = {"target": str(rt.model_dir), "dtype": rt.dtype, "aux_layers": list(aux_layers), **key}
        self.dir.mkdir(parents=True, exist_ok=True)
        index = self.dir / "index.json"
        if index.exists():
            if json.loads(index.read_text()) != json.loads(json.dumps(self.key)):
                raise UsageError(f"--cache-features {self.dir}: holds features of another target, data or layer "
                                 "set; choose an empty directory")
        else:
            index.write_text(json.dumps(self.key, indent=2) + "\n")

    def bytes_per_token(self) -> int:
        elem = torch.empty((), dtype=next(self.rt.model.parameters()).dtype).element_size()
        return 4 * self.rt.cfg.hidden_size * elem  # 3 aux states + the last layer's output

    def announce(self, n_tokens: int) -> int:
        """Log the disk estimate; ResourceError when the file system has less free space."""
        need = n_tokens * self.bytes_per_token()
        have = sum(f.stat().st_size for f in self.dir.glob("*.safetensors"))
        free = shutil.disk_usage(self.dir).free
        log(f"--cache-features {self.dir}: about {human_bytes(need)} for {n_tokens} tokens "
            f"({human_bytes(self.bytes_per_token())} per token), {human_bytes(have)} already there, "
            f"{human_bytes(free)} free")
        if need - have > free:
            raise ResourceError(f"--cache-features {self.dir}: needs about {human_bytes(need - have)} more, "
                                f"only {human_bytes(free)} free")
        return need

    def _path(self, i: int) -> Path:
        return self.dir / f"{i:07d}.safetensors"

    def features(self, idx: list[int], ids: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Like target_features for the padded batch `ids` of samples `idx` (true lengths `lengths`);
        samples not on disk yet are computed with one target forward and stored unpadded."""
        from safetensors.torch import load_file, save_file

        from angelcli.fsutil import atomic_path

        model = self.rt.model
        missing = [r for r, i in enumerate(idx) if not self._path(i).exists()]
        if missing:
            aux, _, last = target_features(model, ids, self.aux_layers, with_last=True)
            for r in missing:
                n = lengths[r]
                with atomic_path(self._path(idx[r])) as tmp:
                    save_file({"aux": aux[r, :n].cpu().contiguous(), "last": last[r, :n].cpu().contiguous(),
                               "ids": ids[r, :n].cpu().contiguous()}, str(tmp))
        B, T = ids.shape
        dev, dtype = ids.device, next(model.parameters()).dtype
        aux = last = None
        for r, i in enumerate(idx):
            t = load_file(str(self._path(i)))
            n = lengths[r]
            if not torch.equal(t["ids"], ids[r, :n].cpu()):
                raise UsageError(f"--cache-features {self.dir}: {self._path(i).name} was made from other tokens; "
                                 "choose an empty directory")
            if aux is None:
                aux = torch.zeros(B, T, t["aux"].shape[-1], dtype=dtype, device=dev)
                last = torch.zeros(B, T, t["last"].shape[-1], dtype=dtype, device=dev)
            aux[r, :n], last[r, :n] = t["aux"].to(dev), t["last"].to(dev)
        with torch.no_grad():
            logits = model.lm_head(model.model.norm(last)).float()
        return aux, logits
