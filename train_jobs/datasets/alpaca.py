"""Alpaca: instruction-tuning rows, and `{"text": ...}` documents for continued pre-training."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .jsonl import JsonFormat
from .schema import NonBlankStr, Sample


class AlpacaRow(BaseModel):
    model_config = ConfigDict(strict=True)

    instruction: NonBlankStr
    input: str | None = None  # appended to the instruction on a new line when not empty
    output: NonBlankStr
    system: str | None = None
    history: list[tuple[NonBlankStr, NonBlankStr]] | None = None  # earlier [question, answer] turns


class PretrainRow(BaseModel):
    model_config = ConfigDict(strict=True)

    text: NonBlankStr


def alpaca_sample(row: AlpacaRow) -> Sample:
    messages = [{"role": "system", "content": row.system}] if row.system else []
    for question, answer in row.history or []:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    prompt = f"{row.instruction}\n{row.input}" if row.input else row.instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": row.output}]
    return Sample(messages=messages)


ALPACA = JsonFormat(row=AlpacaRow, to_sample=alpaca_sample)
ALPACA_PRETRAIN = JsonFormat(row=PretrainRow, to_sample=lambda row: Sample(text=row.text))
