"""nginx.conf, its snippets and conf.d vhosts, from the config."""

from __future__ import annotations

import json
from dataclasses import dataclass

from liminati.config import Config
from liminati.render.templates import render_template

#: The OpenAI paths that reach vLLM. Everything else answers 404 from nginx: vLLM's own key
#: check skips /invocations, /pause, /metrics, /tokenize and more.
API_PATHS = ("/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings")

CA_FILENAME = "liminati-ca.crt"


@dataclass(frozen=True)
class InnerPorts:
    """Ports nginx listens on inside its container; podman publishes them on the tailnet IP.

    Unprivileged on purpose: the container keeps no CAP_NET_BIND_SERVICE.
    """

    https: int = 8443
    http: int = 8080
    dist: int = 8081


INNER = InnerPorts()


def render_nginx(config: Config, api_keys: dict[str, str], internal_key: str) -> dict[str, str]:
    """Relative path (under nginx-user's home) -> content."""
    common = {"domain": config.domain, "inner": INNER}
    first = config.models[0].name.replace("-", "_")
    # one model: every API path goes straight to it; several: njs routes on "model"
    routed = len(config.models) > 1
    files = {
        "nginx.conf": render_template(
            "nginx/nginx.conf.j2",
            routed=routed,
            models=config.models,
            webui_port=config.ports.webui,
            tls_curves=config.nginx.tls_curves,
            # 2 descriptors per proxied stream; the container's nofile limit is raised to match
            nofile=NOFILE,
            worker_connections=WORKER_CONNECTIONS,
            limits=config.nginx,
        ),
        "snippets/mime.types": render_template("nginx/mime.types.j2"),
        "snippets/security-headers.conf": render_template("nginx/security-headers.conf.j2"),
        "snippets/proxy-stream.conf": render_template(
            "nginx/proxy-stream.conf.j2", read_timeout=config.nginx.read_timeout_seconds
        ),
        "snippets/vllm-auth.conf": render_template(
            "nginx/vllm-auth.conf.j2", internal_key=internal_key
        ),
        "snippets/api-keys.map": render_api_keys_map(api_keys),
        "snippets/vllm-failover.conf": render_template("nginx/vllm-failover.conf.j2"),
        "conf.d/00-default.conf": render_template("nginx/00-default.conf.j2", **common),
        "conf.d/10-redirect.conf": render_template("nginx/10-redirect.conf.j2", **common),
        "conf.d/20-webui.conf": render_template(
            "nginx/20-webui.conf.j2",
            client_max_body_size=config.webui.client_max_body_size,
            limits=config.nginx,
            **common,
        ),
        "conf.d/30-vllm.conf": render_template(
            "nginx/30-vllm.conf.j2",
            api_paths=API_PATHS,
            default_upstream=first,
            models=config.models if routed else (),
            limits=config.nginx,
            api_max_body_size=config.nginx.api_max_body_size,
            **common,
        ),
        "conf.d/40-dist.conf": render_template(
            "nginx/40-dist.conf.j2", ca_filename=CA_FILENAME, **common
        ),
    }
    if routed:
        backends = {m.served_name: "@vllm_" + m.name.replace("-", "_") for m in config.models}
        lists = [f"/_liminati_models/{m.name}" for m in config.models]
        files["snippets/liminati-router.js"] = render_template(
            "nginx/liminati-router.js.j2",
            backends=json.dumps(backends, sort_keys=True),
            lists=json.dumps(lists),
        )
    return files


def render_api_keys_map(api_keys: dict[str, str]) -> str:
    """nginx map lines, "Bearer <key>" -> owner (keys and owners are validated: no quotes)."""
    return render_template("nginx/api-keys.map.j2", api_keys=sorted(api_keys.items()))


#: Per worker: 2,000 concurrent streams need 4,000 descriptors; leave room on top.
WORKER_CONNECTIONS = 8192
NOFILE = 16384
SECRET_FILES = frozenset({"snippets/vllm-auth.conf", "snippets/api-keys.map"})
