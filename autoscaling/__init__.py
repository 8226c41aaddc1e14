"""Autoscaling of model deployments: typed config (config.py), the `llm` policy as a pure function
(policy.py), the metrics replicas report (metrics.py), the Serve adapter (serve.py), the decision log
(decisions.py) and the builder glue `serve_apps.model_app` uses (builder.py). `config`, `policy`, `metrics`
and `builder` import neither Ray nor the control plane."""

from autoscaling.config import MODES, LLMPolicyOptions, Mode, ScalingSpec  # noqa: F401
