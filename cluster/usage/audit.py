"""`maas usage audit`: the ledger (usage_records) against the engines' own token counters over a range.

The engines' counters are the numbers vLLM adds to `vllm:prompt_tokens_total` / `vllm:generation_tokens_total`
at every step (serve_apps.witness pushes them to the accounting actor every few seconds). Both sides are
grouped by the model an engine serves: a preset's model id, or a service id (every generation of a service);
a LoRA version's calls belong to its base model's engine. A record counts in the range its call started in,
an engine's tokens when they were processed: calls running across the range's start or end show as a
difference, so audit a range that begins and ends quiet.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cluster.services.lifecycle import service_id_of
from cluster.state.db import ModelVersion, MyModel, ServedModel, UsageRecord
from cluster.usage.schemas import AuditRow


def audit(session: Session, since: float, deltas: dict[str, list[int]]) -> list[AuditRow]:
    preset_apps = {app: model for model, app in session.execute(select(ServedModel.model_id, ServedModel.app_name))}
    lora_base = dict(session.execute(select(ModelVersion.id, MyModel.base_model)
                                     .join(MyModel, MyModel.id == ModelVersion.model_id)
                                     .where(ModelVersion.kind == "lora")).all())
    ledger: dict[str, list[int]] = {}
    rows = session.execute(select(UsageRecord.service_id, func.sum(UsageRecord.calls), func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
                                  func.coalesce(func.sum(UsageRecord.completion_tokens), 0))
                           .where(UsageRecord.ts >= since).group_by(UsageRecord.service_id))
    for service_id, calls, prompt, completion in rows:
        if not service_id and not prompt and not completion:
            continue  # refused before any model (bad key, unknown model): nothing for an engine to count
        total = ledger.setdefault(lora_base.get(service_id, service_id), [0, 0, 0])
        total[0] += int(calls)
        total[1] += int(prompt)
        total[2] += int(completion)
    engines: dict[str, list[int]] = {}
    for app, (prompt, generation) in deltas.items():
        total = engines.setdefault(preset_apps.get(app) or service_id_of(app) or app, [0, 0])
        total[0] += prompt
        total[1] += generation
    answer = []
    for model in sorted(set(ledger) | set(engines)):
        calls, billed_prompt, billed_completion = ledger.get(model, [0, 0, 0])
        prompt, generation = engines.get(model, [0, 0])
        answer.append(AuditRow(model=model, calls=calls, ledger_prompt_tokens=billed_prompt,
                               engine_prompt_tokens=prompt, prompt_difference=billed_prompt - prompt,
                               ledger_completion_tokens=billed_completion, engine_generation_tokens=generation,
                               completion_difference=billed_completion - generation))
    return answer
