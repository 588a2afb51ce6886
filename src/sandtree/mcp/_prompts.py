"""Prompts: short recipes that walk an agent through the workflow with the tools."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

__all__ = ["register_prompts"]


def register_prompts(server: MCPServer) -> None:
    """Add the ten recipes."""

    @server.prompt(name="prepare-environment")
    def prepare_environment(
        task: str, base: str = "python:3.11-slim", project: str = "", packages: str = ""
    ) -> str:
        """Build (or reuse) a tagged image with what a task needs."""
        scope = project or "common"
        name = (packages.split() or ["custom"])[0]
        tag = f"{scope}/{name}-env/{base}"
        return (
            f"Task: {task}\n\n"
            f"1. list_images(tag_prefix='{scope}/') — if {tag!r} exists, use it and stop here.\n"
            f"2. list_images(tag_prefix='{base.split(':')[0]}') for the base; only if missing, "
            f"import_image(registry_url='docker://{base}', tag='{base}').\n"
            f"3. run(command='pip install {packages or '<packages>'}', image='tag:{base}', "
            "disposable=false, timeout=600) and check exit_code.\n"
            f"4. set_tag(image_uuid=<result_image>, tag='{tag}').\n"
            f"5. From now on run(image='tag:{tag}', ...)."
        )

    @server.prompt(name="run-python")
    def run_python(code: str) -> str:
        """Run a Python snippet in a sandbox."""
        return (
            "Find a Python image: list_images(tag_prefix='python'); import_image("
            "registry_url='docker://python:3.11-slim', tag='python:3.11') only if none.\n"
            "Then run(command=<the code below as `python3 -c` or via stdin with "
            "command='python3 -'>, image=<it>) and report stdout, stderr and exit_code.\n\n"
            f"```python\n{code}\n```"
        )

    @server.prompt(name="run-shell")
    def run_shell(command: str, image: str = "ubuntu:noble") -> str:
        """Run a shell command in a sandbox."""
        return (
            f"list_images(tag_prefix='{image.split(':')[0]}'); if {image!r} is missing, "
            f"import_image(registry_url='docker://{image}', tag='{image}').\n"
            f"run(command={command!r}, image='tag:{image}') and report exit_code, stdout, stderr."
        )

    @server.prompt(name="sync-and-run")
    def sync_and_run(source: str, command: str, image: str = "alpine:latest") -> str:
        """Sync a local project and run a command on it."""
        return (
            f"rsync(source={source!r}, destination='/app', exclude=['__pycache__', '.git', "
            "'node_modules', '.venv']) → directory_state_id.\n"
            f"run(command={command!r}, image='tag:{image}', directory_state_id=<id>, cwd='/app').\n"
            "Re-run rsync only after local files change; it sends only what changed."
        )

    @server.prompt(name="install-packages")
    def install_packages(packages: str, image: str = "ubuntu:noble") -> str:
        """Install packages into a new image and keep it."""
        return (
            f"run(command='<package manager> install {packages}', image='tag:{image}', "
            "disposable=false, timeout=600). Check exit_code; then use result_image (or "
            "set_tag it, e.g. '<project>/deps/<base>') for every later run. Without "
            "disposable=false the installation is thrown away."
        )

    @server.prompt(name="parallel-tasks")
    def parallel_tasks(tasks: str, image: str = "ubuntu:noble") -> str:
        """Run several commands at once and collect their results."""
        lines = [t.strip() for t in tasks.splitlines() if t.strip()]
        runs = "\n".join(f"- run(command={t!r}, image='tag:{image}', wait=false)" for t in lines)
        return (
            f"Start each task without waiting:\n{runs}\n"
            "Then wait_operations(operation_ids=[...], mode='all') and report each exit_code."
        )

    @server.prompt(name="build-project")
    def build_project(
        source: str, install_cmd: str = "pip install -e .", test_cmd: str = "pytest"
    ) -> str:
        """Install a project's dependencies into an image, then test it."""
        return (
            f"1. rsync(source={source!r}, destination='/app', exclude=['.git', '__pycache__', "
            "'.venv', 'node_modules']).\n"
            f"2. run(command={install_cmd!r}, cwd='/app', directory_state_id=<id>, "
            "disposable=false, timeout=900) → deps image (set_tag it).\n"
            f"3. run(command={test_cmd!r}, cwd='/app', image=<deps image>, "
            "directory_state_id=<id>, timeout=900); report failures from stdout/stderr."
        )

    @server.prompt(name="debug-failure")
    def debug_failure(operation_id: str) -> str:
        """Find out why an operation failed."""
        return (
            f"get_operation(operation_id={operation_id!r}).\n"
            "- state FAILED/CANCELLED: read error (a limit, a cancel, a missing image).\n"
            "- state SUCCESS but exit_code ≠ 0: the command failed; read stderr, then stdout.\n"
            "- timed_out: raise timeout. *_truncated: raise truncate_output_at or write output "
            "to a file and read_file it.\n"
            "Fix, then run again from the same image (it is unchanged)."
        )

    @server.prompt(name="inspect-image")
    def inspect_image(image: str) -> str:
        """Look inside an image without running anything."""
        return (
            f"list_files(image={image!r}, path='/'), read_file for config files (e.g. "
            "/etc/os-release), grep(image, pattern) to find things, and the resource "
            f"contree://image/{image}/lineage for where it came from. Use run(disposable=true) "
            "only for what these cannot answer."
        )

    @server.prompt(name="multi-stage-build")
    def multi_stage_build(
        source: str,
        install_cmd: str = "pip install -e .",
        build_cmd: str = "python -m build",
        test_cmd: str = "pytest",
    ) -> str:
        """Install, build and test, keeping each stage as a rollback point."""
        return (
            f"1. rsync(source={source!r}, destination='/app').\n"
            f"2. run({install_cmd!r}, cwd='/app', disposable=false) → stage 1 image.\n"
            f"3. run({build_cmd!r}, image=<stage 1>, cwd='/app', disposable=false) → stage 2.\n"
            f"4. run({test_cmd!r}, image=<stage 2>, cwd='/app').\n"
            "Keep each result_image: if a later stage breaks, go back to the one before it."
        )
