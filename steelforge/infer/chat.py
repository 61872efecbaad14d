"""`steelforge chat MODEL`: multi-turn terminal chat with streamed tokens, or one-shot answers as JSONL.

Interactive commands: `/reset` (forget the conversation), `/system TEXT` (new system prompt, conversation
reset), `/save PATH` (conversation as JSON), `/exit`, `/help`. Generation goes through the batched
`generate` (one row interactively, every prompt at once in one-shot mode).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from steelforge.errors import SteelforgeError
from steelforge.infer.generation import LoadedModel, generate

HELP = "commands: /reset  /system TEXT  /save PATH  /exit  /help"


@dataclass
class Sampling:
    """Sampling options shared by chat and serve (greedy when temperature is 0)."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    seed: int = 0


class TextStream:
    """Incremental detokenisation: token ids in, printable new text out (held back mid-character)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        new, self.emitted = text[self.emitted :], len(text)
        return new

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)


def render_prompt(loaded: LoadedModel, messages: list[dict[str, str]], *, raw: bool = False) -> list[int]:
    """Token ids of the conversation under the chat template (or the last user text alone when `raw`)."""
    tokenizer = loaded.tokenizer
    if raw:
        return tokenizer(messages[-1]["content"]).input_ids
    if not loaded.chat_template:
        raise SteelforgeError(
            f"model '{loaded.name}' has no chat template; pass --chat-template FILE or --raw for plain prompts"
        )
    text = tokenizer.apply_chat_template(
        messages, chat_template=loaded.chat_template, add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False).input_ids


class ChatSession:
    """One conversation: its messages, the system prompt, and a reply function that streams."""

    def __init__(self, loaded: LoadedModel, sampling: Sampling, *, system: str | None = None, raw: bool = False) -> None:
        self.loaded = loaded
        self.sampling = sampling
        self.system = system
        self.raw = raw
        self.messages: list[dict[str, str]] = []
        self.generator = torch.Generator().manual_seed(sampling.seed)
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def set_system(self, text: str) -> None:
        self.system = text or None
        self.reset()

    def reply(self, user: str, on_text: Callable[[str], None] | None = None) -> str:
        """Answer `user` given the conversation so far; `on_text` receives the answer as it is decoded."""
        self.messages.append({"role": "user", "content": user})
        ids = render_prompt(self.loaded, self.messages, raw=self.raw)
        stream = TextStream(self.loaded.tokenizer)
        stops = set(self.loaded.stop_token_ids)

        def on_tokens(step: list[int | None]) -> None:
            token = step[0]
            if token is not None and token not in stops:
                piece = stream.push(token)
                if piece and on_text is not None:
                    on_text(piece)

        s = self.sampling
        generate(
            self.loaded.model, [ids], max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
            top_k=s.top_k, stop_token_ids=self.loaded.stop_token_ids, pad_token_id=self.loaded.pad_token_id,
            generator=self.generator, on_tokens=on_tokens,
        )
        answer = stream.text()
        self.messages.append({"role": "assistant", "content": answer})
        return answer

    def save(self, path: Path) -> Path:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"system": self.system, "messages": self.messages}, ensure_ascii=False, indent=1),
                       encoding="utf-8")
        tmp.replace(path)
        return path


def interactive(session: ChatSession, *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    """The read-reply loop: user lines in, streamed answers out, slash commands handled."""
    out = stdout or sys.stdout
    inp = stdin or sys.stdin
    if stdin is None:
        import readline  # noqa: F401  (line editing for input())
    out.write(f"chatting with {session.loaded.name}; {HELP}\n")
    out.flush()
    while True:
        if stdin is None:  # the terminal: input() gives line editing and history (readline)
            try:
                line = input("you> ")
            except EOFError:
                out.write("\n")
                return
        else:
            out.write("you> ")
            out.flush()
            line = inp.readline()
            if not line:  # end of input
                out.write("\n")
                return
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, arg = line.partition(" ")
            if command in ("/exit", "/quit"):
                return
            if command == "/reset":
                session.reset()
                out.write("[conversation reset]\n")
            elif command == "/system":
                session.set_system(arg.strip())
                out.write(f"[system prompt {'set' if arg.strip() else 'cleared'}; conversation reset]\n")
            elif command == "/save":
                if not arg.strip():
                    out.write("[usage: /save PATH]\n")
                else:
                    out.write(f"[saved to {session.save(Path(arg.strip()))}]\n")
            else:
                out.write(f"[{HELP}]\n")
            out.flush()
            continue
        out.write("bot> ")
        out.flush()

        def show(piece: str) -> None:
            out.write(piece)
            out.flush()

        session.reply(line, on_text=show)
        out.write("\n")
        out.flush()


def one_shot(
    loaded: LoadedModel, prompts: list[str], sampling: Sampling, *, system: str | None = None, raw: bool = False
) -> list[dict[str, Any]]:
    """Answer every prompt in one batched generate call; one record per prompt (for JSONL)."""
    rendered = []
    for prompt in prompts:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        rendered.append(render_prompt(loaded, messages, raw=raw))
    result = generate(
        loaded.model, rendered, max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
        top_p=sampling.top_p, top_k=sampling.top_k, stop_token_ids=loaded.stop_token_ids,
        pad_token_id=loaded.pad_token_id, generator=torch.Generator().manual_seed(sampling.seed),
    )
    stops = set(loaded.stop_token_ids)
    records = []
    for prompt, ids, tokens, reason in zip(prompts, rendered, result.sequences, result.finish_reasons, strict=True):
        tokens = [t for t in tokens if t not in stops]
        records.append({
            "prompt": prompt,
            "answer": loaded.tokenizer.decode(tokens, skip_special_tokens=True),
            "prompt_tokens": len(ids),
            "completion_tokens": len(tokens),
            "finish_reason": reason,
        })
    return records


def read_prompts_file(path: Path) -> list[str]:
    """Prompts from a file: JSONL records with a `prompt` field, or one prompt per plain text line."""
    if not path.is_file():
        raise SteelforgeError(f"prompts file '{path}' does not exist; pass a JSONL or text file with one prompt per line")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise SteelforgeError(f"{path}:{number} is not valid JSON; fix the line or use plain text lines") from None
            if "prompt" not in record:
                raise SteelforgeError(f"{path}:{number} has no 'prompt' field; give each JSON line a prompt")
            prompts.append(str(record["prompt"]))
        else:
            prompts.append(line)
    return prompts


def write_jsonl(records: Iterable[dict[str, Any]], path: Path | None) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
