"""The four kinds of quadlet: vLLM (one per model), Open WebUI, nginx and dnsmasq."""

from __future__ import annotations

from liminati.config import Config, Model
from liminati.layout import Layout
from liminati.render.dnsmasq import ADMIN_DIR, ADMIN_PASSWORD, ADMIN_PORT, HOSTS_DIR, LOG_DIR
from liminati.render.dnsmasq import INNER_PORT as DNS_INNER
from liminati.render.ini import ContainerSpec
from liminati.render.nginx import INNER, NOFILE

HEADER = ("Managed by liminati: a hand edit shows up as drift in `liminati plan`.",)
#: nginx-user's home inside the nginx container: the -p prefix all relative paths hang from
NGINX_PREFIX = "/etc/nginx-liminati"
#: Open WebUI's port inside its image
WEBUI_INNER = 8080


def _python_probe(url: str) -> str:
    """A health command for images with python but maybe no curl. Single quotes outside:
    quadlet drops a double quote that ends a value, which would break the command."""
    return f"python3 -c 'import urllib.request; urllib.request.urlopen(\"{url}\", timeout=5)'"


def model_urls(config: Config) -> tuple[str, ...]:
    """Open WebUI's OpenAI connections: each vLLM unit on the host's loopback (pasta forwards
    those ports into its container), in the order of [[models]]."""
    return tuple(f"http://127.0.0.1:{m.port}/v1" for m in config.models)


def _pull(config: Config) -> tuple[str, ...]:
    # Pull= is a podman 4.6 key; the argument works on every version
    return (f"--pull={config.images.pull}",)


def build_vllm(
    config: Config, layout: Layout, model: Model, *, standby: bool = False
) -> ContainerSpec:
    """The unit serving `model`; with `standby`, the one `liminati model switch` starts on the
    standby port first (same alias and key; no restart: a failure must stay a failure)."""
    args: list[str] = [
        "--model",
        model.model,
        "--served-model-name",
        model.served_name,
        # 0.0.0.0 inside the container only: podman publishes the port on 127.0.0.1
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--max-model-len",
        str(model.max_model_len),
        "--gpu-memory-utilization",
        f"{model.gpu_memory_utilization:g}",
        "--tensor-parallel-size",
        str(model.tensor_parallel_size),
    ]
    args += model.extra_args
    # the GPU through the NVIDIA CDI specification (`nvidia-ctk cdi generate`)
    if model.gpus == "none":
        devices: tuple[str, ...] = ()
    elif model.gpus == "all":
        devices = ("nvidia.com/gpu=all",)
    else:
        devices = tuple(f"nvidia.com/gpu={g}" for g in model.gpus.split(","))
    role = "vLLM standby (model switch)" if standby else "vLLM"
    return ContainerSpec(
        header=HEADER,
        description=f"liminati: {role} serving {model.model} as {model.served_name}",
        name=model.standby_unit if standby else model.unit,
        image=config.images.vllm,
        exec_args=tuple(args),
        publish=(f"127.0.0.1:{model.standby if standby else model.port}:8000",),
        # lowercase z: the cache is shared by every vLLM unit of the user (several models, the
        # standby of a switch, `model pull`); Z would relabel it away from the others
        volumes=(f"{layout.hf_cache}:/root/.cache/huggingface:z",),
        # VLLM_API_KEY: the internal key, read by vLLM from its environment, never in argv
        environment_files=(str(layout.vllm_env(model)),),
        environment=(("HF_HOME", "/root/.cache/huggingface"),),
        devices=devices,
        podman_args=(
            *_pull(config),
            f"--shm-size={config.vllm.shm_size}",
        ),
        # the image has python but not necessarily curl
        health_cmd=_python_probe("http://127.0.0.1:8000/health"),
        labels=(("io.liminati.service", "vllm"), ("io.liminati.model", model.served_name)),
        timeout_start_sec=config.vllm.start_timeout_seconds,
        timeout_stop_sec=120,
        restart="no" if standby else "always",
    )


def build_webui(config: Config, layout: Layout) -> ContainerSpec:
    models_ports = ",".join(f"-T,{m.port}" for m in config.models)
    return ContainerSpec(
        header=HEADER,
        description="liminati: Open WebUI",
        name="open-webui",
        image=config.images.webui,
        publish=(f"127.0.0.1:{config.ports.webui}:{WEBUI_INNER}",),
        # pasta forwards the container's loopback ports to the host's: vLLM on 127.0.0.1
        network=f"pasta:{models_ports}",
        volumes=(f"{layout.webui_data}:/app/backend/data:Z",),
        environment_files=(str(layout.webui_env),),
        environment=(
            ("ENABLE_OLLAMA_API", "false"),
            ("ENABLE_SIGNUP", "false"),
            ("WEBUI_URL", f"https://webui.{config.domain}"),
            ("CORS_ALLOW_ORIGIN", f"https://webui.{config.domain}"),
            (
                "OPENAI_API_BASE_URLS",
                ";".join(model_urls(config)),
            ),
            ("SCARF_NO_ANALYTICS", "true"),
            ("DO_NOT_TRACK", "true"),
            ("ANONYMIZED_TELEMETRY", "false"),
        ),
        drop_caps=("ALL",),
        add_caps=("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"),
        health_cmd=f"curl -fsS http://127.0.0.1:{WEBUI_INNER}/health",
        podman_args=_pull(config),
        labels=(("io.liminati.service", "webui"),),
        # first start runs database migrations; it ignores SIGTERM for a while when stopping
        timeout_start_sec=900,
        timeout_stop_sec=60,
    )


def build_nginx(config: Config, layout: Layout, listen_ip: str) -> ContainerSpec:
    home = layout.nginx_home
    # each model's main and standby port (nginx falls back to the standby during a switch)
    models = [p for m in config.models for p in (m.port, m.standby)]
    ports = ",".join(f"-T,{p}" for p in (config.ports.webui, *models))
    return ContainerSpec(
        header=HEADER,
        description="liminati: nginx gateway (HTTPS for webui and vllm, client downloads)",
        name="nginx-proxy",
        image=config.images.nginx,
        # our own entrypoint: the image's wrapper scripts would try to edit a read-only conf.d
        exec_args=(
            "-p",
            f"{NGINX_PREFIX}/",
            "-c",
            f"{NGINX_PREFIX}/nginx.conf",
            "-g",
            "daemon off;",
        ),
        publish=(
            f"{listen_ip}:{config.ports.https}:{INNER.https}",
            f"{listen_ip}:{config.ports.http}:{INNER.http}",
            f"{listen_ip}:{config.ports.dist}:{INNER.dist}",
        ),
        network=f"pasta:{ports}",
        # the whole home, as a directory: a file bind mount would keep showing the old inode
        # after an atomic rename, and `nginx -s reload` would reread the old config
        volumes=(f"{home}:{NGINX_PREFIX}:ro,Z",),
        drop_caps=("ALL",),
        # `user root` in nginx.conf still calls setgid/initgroups/setuid for the workers
        add_caps=("SETGID", "SETUID"),
        read_only=True,
        health_cmd=f"curl -fsS -o /dev/null http://127.0.0.1:{INNER.dist}/{'liminati-ca.crt'}",
        podman_args=(
            *_pull(config),
            "--entrypoint=nginx",
            f"--tmpfs={NGINX_PREFIX}/tmp:rw,mode=0700",
            "--tmpfs=/var/cache/nginx:rw",
            "--tmpfs=/run:rw",
            f"--ulimit=nofile={NOFILE}:{NOFILE}",
        ),
        labels=(("io.liminati.service", "nginx"),),
        # new certificates and config without dropping connections
        exec_reload=(
            "/usr/bin/podman",
            "exec",
            "nginx-proxy",
            "nginx",
            "-p",
            f"{NGINX_PREFIX}/",
            "-c",
            f"{NGINX_PREFIX}/nginx.conf",
            "-s",
            "reload",
        ),
        timeout_start_sec=120,
        timeout_stop_sec=30,
    )


def build_dnsmasq(config: Config, layout: Layout, listen_ip: str) -> ContainerSpec:
    return ContainerSpec(
        header=HEADER,
        description=f"liminati: dnsmasq, authoritative for {config.domain}",
        name="dnsmasq",
        image=config.images.dnsmasq,
        exec_args=("--keep-in-foreground", "--conf-file=/etc/dnsmasq.conf"),
        publish=(
            f"{listen_ip}:{config.ports.dns}:{DNS_INNER}/udp",
            f"{listen_ip}:{config.ports.dns}:{DNS_INNER}/tcp",
            # the admin page lives in this container's network namespace
            f"{listen_ip}:{config.ports.dns_admin}:{ADMIN_PORT}",
        ),
        volumes=(
            f"{layout.dnsmasq_conf}:/etc/dnsmasq.conf:ro,Z",
            # shared with the admin page (lowercase z: a label both containers may use)
            f"{layout.dnsmasq_hosts}:{HOSTS_DIR}:ro,z",
            f"{layout.dnsmasq_log_dir}:{LOG_DIR}:rw,z",
        ),
        drop_caps=("ALL",),
        # port 53 inside the container, then dnsmasq drops to an unprivileged user
        add_caps=("NET_BIND_SERVICE", "SETGID", "SETUID"),
        read_only=True,
        podman_args=(*_pull(config), "--entrypoint=dnsmasq"),
        labels=(("io.liminati.service", "dnsmasq"),),
        # the admin page lives in this container's network namespace and stops with it
        # (PartOf=); when dnsmasq comes back from a crash, so must the admin page: its own
        # start job failed while dnsmasq's old container was still being removed
        upholds=("dnsmasq-admin.service",),
        timeout_start_sec=120,
        timeout_stop_sec=30,
    )


def build_dnsadmin(config: Config, layout: Layout) -> ContainerSpec:
    """The DNS admin page: its own container under dnsmasq-user, in dnsmasq's network
    namespace (so it can ask dnsmasq on 127.0.0.1), writing only the watched hosts dir."""
    return ContainerSpec(
        header=HEADER,
        description="liminati: DNS admin page (records, recent queries, health)",
        name="dnsmasq-admin",
        image=config.images.dnsadmin,
        exec_args=("python3", f"{ADMIN_DIR}/app.py", "--config", f"{ADMIN_DIR}/config.json"),
        network="container:dnsmasq",
        volumes=(
            f"{layout.dnsadmin_dir}:{ADMIN_DIR}:ro,Z",
            f"{layout.dnsadmin_password}:{ADMIN_PASSWORD}:ro,Z",
            f"{layout.dnsmasq_hosts}:{HOSTS_DIR}:rw,z",
            f"{layout.dnsmasq_log_dir}:{LOG_DIR}:ro,z",
        ),
        drop_caps=("ALL",),
        read_only=True,
        health_cmd=_python_probe(f"http://127.0.0.1:{ADMIN_PORT}/healthz"),
        podman_args=(*_pull(config), "--tmpfs=/tmp:rw,mode=1777"),
        labels=(("io.liminati.service", "dnsadmin"),),
        # it lives in dnsmasq's namespace: started after it, restarted with it
        after=("dnsmasq.service",),
        wants=(),
        requires=("dnsmasq.service",),
        part_of=("dnsmasq.service",),
        timeout_start_sec=120,
        timeout_stop_sec=15,
    )


def build_service_names(config: Config) -> list[tuple[str, str, str]]:
    """(service name people type, user, unit) for every unit liminati runs."""
    users = config.users
    out = [(m.unit, users.vllm.name, f"{m.unit}.service") for m in config.models]
    out += [
        ("open-webui", users.webui.name, "open-webui.service"),
        ("nginx", users.nginx.name, "nginx-proxy.service"),
        ("dnsmasq", users.dnsmasq.name, "dnsmasq.service"),
        ("dnsmasq-admin", users.dnsmasq.name, "dnsmasq-admin.service"),
    ]
    return out
