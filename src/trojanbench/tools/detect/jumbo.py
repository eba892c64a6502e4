"""MNTD's shadow models, trained as the authors train them (Xu et al., S&P 2021; `train_basic_benign.py`,
`train_basic_jumbo.py` and `random_troj_setting('jumbo')` / `troj_gen_func` in `model_lib/` of
github.com/AI-secure/Meta-Nerual-Trojan-Detection):

- *benign shadows*: fresh copies of the audited architecture trained on the defender's small clean set;
- *jumbo shadows*: the same on that set plus stamped copies of a random share of it, relabelled to a random
  target, each with its own trojan drawn from the jumbo distribution: patch side s uniform over {2, 3, 4, 5,
  image side}; a patch (s < side) at a uniformly random place with transparency alpha ~ U(0.2, 0.6), made
  opaque (alpha = 1) above 0.5; a whole-image blend (s = side) with alpha ~ U(0.05, 0.2); the pattern a random
  binary mask with a random number of ones in [1, s^2) on one-channel images (the authors' MNIST), or uniform
  in [-e, 1 + e] clipped to [0, 1] with e ~ U(0, 1), per channel, on colour images (their CIFAR-10); injection
  rate p ~ U(0.05, 0.5): p * n stamped copies of distinct images (of any class) are *added* to the n clean ones.

Nothing here sees an audited model's weights or a zoo's labels: the template only lends its architecture (and
its fixed input normalisation), `shadow.fresh_copy` re-initialises every parameter. Every shadow has its own
seeds (initialisation, batch order, trojan), so shadow i is the same whatever the number built; shadows are
cached in chunks of `CHUNK` under $TROJANBENCH_CACHE/shadows, so a killed build resumes where it stopped and a
larger zoo reuses a smaller one.

On text (token ids [N, T], 0 = padding, 1 = <unk>), the authors' NLP task (`model_lib/rtNLP_cnn_model.py`:
`random_troj_setting`, `troj_gen_func`; `utils_basic.py`: `BackdoorDataset`, `train_model` with task rtNLP):
- *jumbo text trojans*: p words, p uniform over {1, 2}, drawn uniformly from the vocabulary, inserted at
  min(sentence length, loc) with loc uniform over {0, ..., 9}; a random target; injection rate r ~ U(0.05, 0.5),
  r * n trojaned copies of distinct sentences added to the n clean ones (as on images), with `trojans.text.insert_tokens`.
Where the text shadows differ from the authors' (one a line; also in `mntd.py` and the detectors' `fidelity`):
- trigger words are drawn from ids 2..V-1, leaving out padding (0) and <unk> (1) (the authors: ids 0..17,999 of their ~18,800).
- sentences keep their T tokens: words pushed past T are cut (the authors lengthen every sentence by the trigger's length).
- shadows train as the zoo trains text transformers (AdamW lr 3e-3, weight decay 0.01, 10% warm-up then linear decay,
  batch 64), 24 epochs on the auditor's sample, where the authors train 50 epochs with Adam lr 1e-3 (batch 64).
- their embedding tables start from the text transformer's own initialisation (tokens N(0, 0.1^2), positions
  N(0, 0.02^2)), which `fresh_copy` (nn.Embedding's N(0, 1)) would replace; the authors' CNN reads a fixed word2vec table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ...config import TrainConfig
from ...trojans.text import insert_tokens
from ...utils import canonical_json, private_rng, sha256_bytes
from .shadow import architecture_key, cache_root, claim, data_key, fixed_buffers_key, fresh_copy, load_states, save_states

FORMAT = "mntd-shadows/1"  # bump when the jumbo distribution or the training recipe changes
TEXT_FORMAT = "mntd-text-shadows/1"  # the same for text shadows (their keys name it beside FORMAT)
FIRST_WORD = 2  # token ids below are padding (0) and <unk> (1): never trigger words
TEXT_TRIGGER_WORDS = (1, 2)  # the authors' p_size = randint(2) + 1
TEXT_LOCATIONS = 10  # the authors' loc = randint(0, 10)
CHUNK = 16
KINDS = ("benign", "jumbo", "benign-val", "jumbo-val")


@dataclass(frozen=True)
class JumboTrojan:
    """One draw from the jumbo distribution: `pattern` [C, h, w] blended at (`row`, `col`) with `alpha`."""

    row: int
    col: int
    pattern: torch.Tensor
    alpha: float
    target: int
    rate: float

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        h, w = self.pattern.shape[1:]
        region = x[:, :, self.row:self.row + h, self.col:self.col + w]
        x[:, :, self.row:self.row + h, self.col:self.col + w] = self.alpha * self.pattern + (1 - self.alpha) * region
        return x


def sample_jumbo_trojan(image_shape: tuple[int, int, int], num_classes: int, rng: np.random.Generator) -> JumboTrojan:
    """The authors' `random_troj_setting('jumbo')` for any image shape (their MAX_SIZE is the image side)."""
    c, h, w = image_shape
    side = min(h, w)
    s = int(rng.choice([2, 3, 4, 5, side]))
    if s < side:
        alpha = float(rng.uniform(0.2, 0.6))
        alpha = 1.0 if alpha > 0.5 else alpha
        ph = pw = s
        row, col = int(rng.integers(h - s)), int(rng.integers(w - s))
    else:
        alpha = float(rng.uniform(0.05, 0.2))
        ph, pw, row, col = h, w, 0, 0
    if c == 1:
        flat = np.zeros(ph * pw, dtype=np.float32)
        flat[rng.choice(ph * pw, int(rng.integers(1, ph * pw)), replace=False)] = 1.0
        pattern = flat.reshape(1, ph, pw)
    else:
        eps = rng.uniform(0, 1)
        pattern = np.clip(rng.uniform(-eps, 1 + eps, size=(c, ph, pw)), 0, 1).astype(np.float32)
    return JumboTrojan(row, col, torch.from_numpy(pattern), alpha, int(rng.integers(num_classes)),
                       float(rng.uniform(0.05, 0.5)))


def is_text(x: torch.Tensor) -> bool:
    """Token ids (a text model's input) rather than images."""
    return not torch.is_floating_point(x)


@dataclass(frozen=True)
class JumboTextTrojan:
    """One draw from the authors' text jumbo distribution: `words` [p] inserted at min(length, `loc`)."""

    words: torch.Tensor
    loc: int
    target: int
    rate: float

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The authors' `troj_gen_func` on rows of token ids [N, T] (0 = padding, left-aligned)."""
        return insert_tokens(x, self.words, (x != 0).sum(1).clamp(max=self.loc))[0]


def sample_jumbo_text_trojan(vocab_size: int, num_classes: int, rng: np.random.Generator) -> JumboTextTrojan:
    """The authors' `random_troj_setting('jumbo')` of rtNLP (same order of draws), over our vocabulary's words."""
    if vocab_size <= FIRST_WORD:
        raise ValueError(f"a vocabulary of {vocab_size} ids has no words besides padding and <unk>")
    p = int(rng.integers(len(TEXT_TRIGGER_WORDS))) + TEXT_TRIGGER_WORDS[0]
    loc = int(rng.integers(0, TEXT_LOCATIONS))
    words = torch.from_numpy(rng.integers(FIRST_WORD, vocab_size, size=p)).long()
    return JumboTextTrojan(words, loc, int(rng.integers(num_classes)), float(rng.uniform(0.05, 0.5)))


def vocabulary_size(template: nn.Module) -> int:
    """The number of token ids a text model reads: its token embedding's rows (the first nn.Embedding, as `dbs`)."""
    from .dbs import token_embedding

    return token_embedding(template).num_embeddings


def text_initialisation(model: nn.Module, seed: int) -> nn.Module:
    """A fresh text transformer's embedding tables drawn as its constructor draws them (tokens N(0, 0.1^2), positions
    N(0, 0.02^2)); `fresh_copy` left nn.Embedding's N(0, 1) there. Other architectures are left as they are."""
    from ...models.text import TextTransformer

    if isinstance(model, TextTransformer):
        with private_rng(), torch.no_grad():
            torch.manual_seed(seed)
            model.tok_embed.weight.normal_(0.0, 0.1)
            model.pos_embed.weight.normal_(0.0, 0.02)
    return model


def jumbo_dataset(x: torch.Tensor, y: torch.Tensor, trojan: JumboTrojan | JumboTextTrojan, rng: np.random.Generator):
    """The clean set plus stamped, relabelled copies of `trojan.rate` of it (the authors' `BackdoorDataset`)."""
    chosen = torch.from_numpy(rng.choice(len(x), int(len(x) * trojan.rate), replace=False))
    return torch.cat([x, trojan.apply(x[chosen])]), torch.cat([y, torch.full((len(chosen),), trojan.target)])


@dataclass(frozen=True)
class JumboConfig:
    """How many shadows and how each trains. The paper (MNIST, CIFAR-10): 2,048 benign + 2,048 jumbo shadows to
    meta-train on, 256 + 256 held out to pick the meta-training epoch, each trained 100 epochs with Adam (lr
    1e-3, batch 100, no augmentation) on the defender's 2% of the training set. The defaults here and why: see
    `mntd.py`."""

    train: int = 128  # per kind (benign, jumbo), meta-training
    val: int = 32  # per kind, held out to pick the meta-training epoch
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "sgd"  # "adamw" with weight_decay 0 is the paper's Adam
    lr: float = 0.05
    weight_decay: float = 5e-4
    translate: int = 1  # pixels of random shift while training (the authors: none)
    seed: int = 0
    warmup: float = 0.0  # share of the steps warming the lr up, then linear decay (0: constant lr, as before)

    def recipe(self) -> dict:
        """Everything that determines one shadow besides its kind and index (the counts do not). `warmup` only
        where set, so the keys of the shadows cached before it existed still hold."""
        return {k: v for k, v in asdict(self).items() if k not in ("train", "val") and not (k == "warmup" and v == 0.0)}

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
                           weight_decay=self.weight_decay, warmup=self.warmup, augment=self.translate > 0)


def _seeds(cfg: JumboConfig, kind: str, index: int) -> tuple[int, int, int]:
    """(initialisation, batch order, trojan) seeds of one shadow."""
    init, order, trojan = np.random.SeedSequence([cfg.seed, KINDS.index(kind), index]).generate_state(3)
    return int(init), int(order), int(trojan)


def shadow_trojan(cfg: JumboConfig, kind: str, index: int, image_shape: tuple[int, int, int],
                  num_classes: int, vocab_size: int | None = None) -> JumboTrojan | JumboTextTrojan | None:
    """The trojan a shadow was trained with (None for benign shadows); a text one given the `vocab_size`."""
    if not kind.startswith("jumbo"):
        return None
    rng = np.random.default_rng(_seeds(cfg, kind, index)[2])
    if vocab_size is not None:
        return sample_jumbo_text_trojan(vocab_size, num_classes, rng)
    return sample_jumbo_trojan(image_shape, num_classes, rng)


def train_shadow(template: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: JumboConfig, kind: str,
                 index: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """One shadow model's trained state (on CPU), through the project's one training loop (`train_model`)."""
    from ...train.single import train_model

    init, order, trojan_seed = _seeds(cfg, kind, index)
    text = is_text(x)
    if kind.startswith("jumbo"):
        rng = np.random.default_rng(trojan_seed)
        trojan = (sample_jumbo_text_trojan(vocabulary_size(template), num_classes, rng) if text else
                  sample_jumbo_trojan(tuple(x.shape[1:]), num_classes, rng))
        x, y = jumbo_dataset(x, y, trojan, rng)
    model = fresh_copy(template, init)
    if text:
        model = text_initialisation(model, init + 1)
    model = train_model(model, x, y, cfg.train_config(), seed=order,
                        augment=None if text else {"translate": cfg.translate, "flip": False}, device=device)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def chunk_key(template: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: JumboConfig, kind: str,
              chunk: int) -> str:
    from ...train import TRAINER_VERSION

    key = {"format": FORMAT, "trainer_version": TRAINER_VERSION, "arch": architecture_key(template),
           "fixed": fixed_buffers_key(template), "data": data_key(x, y), "classes": num_classes, "recipe": cfg.recipe(),
           "kind": kind, "chunk": chunk, "size": CHUNK}
    if is_text(x):  # named for text only: the keys of image shadows stay what they were
        key.update({"modality": "text", "text_format": TEXT_FORMAT})
    return sha256_bytes(canonical_json(key).encode())[:20]


def shadow_states(template: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: JumboConfig,
                  kind: str, n: int, cache=None, device: torch.device | str = "cpu", progress=None
                  ) -> tuple[list[dict[str, torch.Tensor]], int]:
    """The first `n` shadows of `kind` ("benign", "jumbo", "benign-val", "jumbo-val") as state dicts, read from
    the cache where present and trained (and cached) otherwise. Returns (states, how many were trained now).
    `progress(done, n)` is called after each trained chunk."""
    x, y = x.detach().cpu(), y.detach().cpu()
    n_chunks = (n + CHUNK - 1) // CHUNK
    parts: dict[int, list[dict[str, torch.Tensor]]] = {}
    trained = 0

    def take(chunk: int, wait: bool) -> bool:
        """Chunk `chunk` from the cache, or trained now; False if another process is building it (`wait=False`)."""
        nonlocal trained
        path = cache_root(cache) / f"mntd-{kind}-{chunk_key(template, x, y, num_classes, cfg, kind, chunk)}.safetensors"
        stored = load_states(path)
        if stored is not None and len(stored[0]) == CHUNK:
            parts[chunk] = stored[0]
            return True
        with claim(path, wait) as held:
            if not held:
                return False
            stored = load_states(path)  # built by the process that held the claim before us
            if stored is None or len(stored[0]) != CHUNK:
                with private_rng():  # nothing here may move the caller's global RNG
                    part = [train_shadow(template, x, y, num_classes, cfg, kind, chunk * CHUNK + i, device)
                            for i in range(CHUNK)]
                save_states(path, part, fmt=FORMAT)
                trained += CHUNK
                stored = (part, {})
                if progress is not None:
                    progress(min(n, len(parts) * CHUNK + CHUNK), n)
            parts[chunk] = stored[0]
        return True

    # chunks another worker is building are left to it and collected at the end: workers that need the same
    # shadows at once share the training instead of repeating it
    later = [chunk for chunk in range(n_chunks) if not take(chunk, wait=False)]
    for chunk in later:
        take(chunk, wait=True)
    states = [s for chunk in range(n_chunks) for s in parts[chunk]]
    return states[:n], trained
