"""What an image under images/ promises its pod: read from its Dockerfile and README, not restated.

Enough of a Dockerfile reader for this repo's files: line continuations, ARG defaults and ${VAR}
substitution, ENV (k=v pairs), USER, and the RUN commands that create the runtime user and the
directories it owns (groupadd/useradd --gid/--uid, mkdir -p, chown).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGES = REPO_ROOT / "images"
# Env vars whose value is a directory the process writes into (caches, work dirs).
WRITABLE_DIR_VARS = ("HOME", "NEMO_HOME", "HF_HOME", "LLMOPS_EVAL_WORKDIR", "VLLM_CACHE_ROOT", "TMPDIR")
# Env vars whose value is a file the process writes.
WRITABLE_FILE_VARS = ("LLMOPS_XCOM_PATH",)


@dataclass
class ImageContract:
    name: str
    uid: int | None = None
    gid: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    owned_dirs: set[str] = field(default_factory=set)  # chown'ed to the runtime user at build time
    readme_env: set[str] = field(default_factory=set)  # the README's "Environment the ... provides" table

    def writable_paths(self, pod_env: dict[str, str]) -> set[str]:
        """Paths the process writes, with the pod's env overriding the image's; /tmp always."""
        env = {**self.env, **pod_env}
        paths = {"/tmp", *self.owned_dirs}
        paths |= {env[k] for k in WRITABLE_DIR_VARS if env.get(k)}
        paths |= {str(PurePosixPath(env[k]).parent) for k in WRITABLE_FILE_VARS if env.get(k)}
        return paths


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


def read_image(name: str) -> ImageContract:
    directory = IMAGES / name
    contract = ImageContract(name=name)
    args: dict[str, str] = {}
    users: dict[str, int] = {"root": 0, "root:gid": 0}
    groups: dict[str, int] = {}
    for keyword, rest in _instructions((directory / "Dockerfile").read_text()):
        if keyword == "ARG" and "=" in rest:
            key, _, default = rest.partition("=")
            args[key] = default.strip('"')
        elif keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                contract.env[key] = _expand(value, args)
        elif keyword == "USER":
            user = _expand(rest, args)
            contract.uid = int(user) if user.isdigit() else users[user]
        elif keyword == "RUN":
            for command in re.split(r"&&|;|\|\|", _expand(rest, args)):
                try:
                    words = shlex.split(command.replace('"', ""))
                except ValueError:  # a quote split by the separators above: not a user/dir command
                    continue
                if not words:
                    continue
                if words[0] == "groupadd" and "--gid" in words:
                    groups[words[-1]] = int(words[words.index("--gid") + 1])
                elif words[0] == "useradd" and "--uid" in words:
                    users[words[-1]] = int(words[words.index("--uid") + 1])
                    if "--gid" in words:
                        group = words[words.index("--gid") + 1]
                        users[f"{words[-1]}:gid"] = int(group) if group.isdigit() else groups[group]
                elif words[0] == "chown":
                    contract.owned_dirs |= {w for w in words[1:] if w.startswith("/")}
    user = next((u for u, uid in users.items() if uid == contract.uid and ":" not in u), None)
    contract.gid = users.get(f"{user}:gid") if user else None
    readme = (directory / "README.md").read_text()
    section = re.search(r"^## Environment the .*?$(.*?)(?=^## |\Z)", readme, re.M | re.S)
    if section:
        for row in section.group(1).splitlines():
            if row.startswith("|") and not set(row) <= set("|- "):
                first = row.split("|")[1]
                contract.readme_env |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", first))
    return contract


def under_a_mount(path: str, mounts: set[str]) -> bool:
    p = PurePosixPath(path)
    return any(p == PurePosixPath(m) or PurePosixPath(m) in p.parents for m in mounts)
