"""Multi-turn chat that keeps the KV cache across turns.

Each turn encodes only its own text (the template's user block, ending where
the assistant's reply begins) and prefills it at the position where the
conversation stopped; the earlier turns stay in the cache, never re-encoded.
A template is data: strings with ``{content}``/``{system}`` slots in which the
template's special pieces (``<|eot_id|>``, ``</s>``...) become single ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import LumiError, UsageError
from .generate import Generation, generate
from .model import Model
from .sampler import SamplingParams


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    start: str  # once, before everything
    system: str | None  # a system block ("{content}"), or None when it folds into the first user turn
    first_user: str | None  # the first user turn when the system prompt folds in ("{system}", "{content}")
    user: str  # a user turn, ending where the assistant's reply begins ("{content}")
    after_reply: str  # what follows the reply's stop piece, before the next turn
    stops: tuple[str, ...]  # pieces that end the assistant's reply
    specials: tuple[str, ...]  # pieces that are one token each, not text


TEMPLATES = {
    # Meta's Llama 2 chat: each turn is "<s>[INST] ... [/INST]", the reply ends with "</s>"
    "llama2": ChatTemplate("llama2", "", None, "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{content} [/INST]",
                           "<s>[INST] {content} [/INST]", "", ("</s>",), ("<s>", "</s>")),
    # Llama 3 instruct
    "llama3": ChatTemplate("llama3", "<|begin_of_text|>",
                           "<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>", None,
                           "<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n", "", ("<|eot_id|>", "<|end_of_text|>"),
                           ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                            "<|end_of_text|>")),
    # TinyLlama chat (Zephyr style; its role markers are plain text in its vocabulary)
    "tinyllama": ChatTemplate("tinyllama", "<s>", "<|system|>\n{content}</s>\n", None,
                              "<|user|>\n{content}</s>\n<|assistant|>\n", "\n", ("</s>",), ("<s>", "</s>")),
    # Qwen2 instruct (ChatML)
    "chatml": ChatTemplate("chatml", "", "<|im_start|>system\n{content}<|im_end|>\n", None,
                           "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n", "\n",
                           ("<|im_end|>", "<|endoftext|>"), ("<|im_start|>", "<|im_end|>", "<|endoftext|>")),
}


class ChatSession:
    """One conversation with a model; ``reply(text)`` returns a Generation to stream."""

    def __init__(self, model: Model, tokenizer, template: ChatTemplate, *, system: str | None = None,
                 sampling: SamplingParams | None = None, seed: int | None = None, max_new_tokens: int = 256):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.sampling = sampling or SamplingParams()
        self.rng = np.random.default_rng(seed)
        self.max_new_tokens = max_new_tokens
        self.special_ids = {piece: self._special_id(piece) for piece in template.specials}
        self.stop_ids = frozenset(self.special_ids[p] for p in template.stops if p in self.special_ids)
        self.ids: list[int] = []  # every id fed to the model so far, in order
        self.pending = self.encode(template.start)  # ids to feed before the next turn's text
        self.system = system
        if system is not None and template.system is not None:
            self.pending += self.encode(template.system.format(content=system))
        model.reset()

    def _special_id(self, piece: str) -> int:
        token = self.tokenizer.piece_id(piece)
        if token is None:
            raise UsageError("--template", f"{self.template.name} needs the special piece {piece!r}, "
                                           f"which {self.tokenizer.path} does not have")
        return token

    def encode(self, text: str) -> list[int]:
        """Template text to ids: special pieces as their ids, the text between them encoded without BOS."""
        if not text:
            return []
        ids: list[int] = []
        pattern = "(" + "|".join(map(re.escape, self.template.specials)) + ")"
        for part in re.split(pattern, text):
            if part in self.special_ids:
                ids.append(self.special_ids[part])
            elif part:
                ids += self.tokenizer.encode(part, bos=False)
        return ids

    @property
    def position(self) -> int:
        return len(self.ids)

    def reply(self, content: str) -> _Turn:
        """Feed the user's turn after the cached context and generate the assistant's reply."""
        t = self.template
        if not self.ids and self.system is not None and t.first_user is not None:
            turn = t.first_user.format(system=self.system, content=content)
        else:
            turn = t.user.format(content=content)
        prompt = self.pending + self.encode(turn)
        left = self.model.max_seq_len - self.position
        if len(prompt) + 1 > left:
            raise LumiError(f"the chat fills the context of {self.model.max_seq_len} tokens; "
                            "start a new chat or raise --max-seq-len")
        gen = generate(self.model, prompt, min(self.max_new_tokens, left - len(prompt) + 1), sampling=self.sampling,
                       rng=self.rng, start_pos=self.position, stop_ids=self.stop_ids)
        return _Turn(self, gen)

    def _close(self, gen: Generation) -> None:
        """After a reply: the cache holds prompt + reply but its last token, which the next turn feeds first."""
        fed = gen.prompt_ids + gen.generated_ids[:-1]
        self.ids += fed
        tail = gen.generated_ids[-1:]
        if not tail or tail[0] not in self.stop_ids:  # cut short: close the assistant's turn properly
            tail.append(self.special_ids[self.template.stops[0]])
        self.pending = tail + self.encode(self.template.after_reply)


class _Turn:
    """A reply: iterate it like the Generation it wraps (its fields read through); when the
    iteration ends, or is abandoned midway (Ctrl-C), the session takes back its tokens."""

    def __init__(self, session: ChatSession, gen: Generation):
        self._session, self._gen = session, gen

    def __getattr__(self, name):
        return getattr(self._gen, name)

    def __iter__(self):
        try:
            yield from self._gen
        finally:
            self._session._close(self._gen)
