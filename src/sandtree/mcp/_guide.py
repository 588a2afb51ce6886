"""The guide an agent reads first (``get_guide`` and ``contree://guide/{section}``)."""

from __future__ import annotations

__all__ = ["GUIDE", "INSTRUCTIONS"]

INSTRUCTIONS = """\
# sandtree: sandboxes whose images branch like git

Every `run` starts a fresh, isolated sandbox from an immutable image. `disposable=false` keeps
the resulting filesystem as a new image (the run's `result_image`), a child of the input:
branch by running from any image, roll back by using an ancestor.

Start with `list_images` (is there a base already?), `import_image` only if not, `rsync` your
project once and pass its `directory_state_id` to every `run`. Read files with `list_files`,
`read_file` and `grep` (no sandbox needed). `get_guide(section)` explains more: workflow,
reference, quickstart, state, async, tagging, errors.
"""

GUIDE: dict[str, str] = {
    "workflow": """\
# Workflow

1. `list_images(tag_prefix="python")`: reuse an image that exists.
2. `import_image(registry_url="docker://python:3.11-slim", tag="python:3.11")`: only if none.
3. `rsync(source="/abs/project", destination="/app", exclude=["__pycache__", ".git", ".venv"])`
   returns a `directory_state_id`. Sync once; sync again only when local files change (it is
   cheap: unchanged files are neither hashed nor sent again).
4. `run(command="python /app/main.py", image=..., directory_state_id=...)`.
5. `run(command="pip install numpy", image=..., disposable=false)` keeps the result as a new
   image: use its `result_image` from then on, or `set_tag` it. Without `disposable=false`
   the changes are thrown away.
6. Parallel branches: `run(..., wait=false)` twice, then `wait_operations([...])`.
7. Artifacts: `download(image=result_image, path="/app/dist/tool", destination="/abs/tool",
   executable=true)`.
8. Roll back: read `contree://image/{uuid}/lineage`, take `parent.uuid`, run from it.

Rules: images never change; a run with `filesystem_changed=false` made no new image
(`result_image` is the input). Check `exit_code`, not only `state`: SUCCESS means the sandbox
ran, not that your command succeeded.
""",
    "reference": """\
# Reference

- Images are named by UUID or `tag:NAME` (e.g. `tag:python:3.11`).
- `run(command, image, shell=true, env={}, cwd="" (the image's), timeout=30, disposable=true,
  stdin=None, directory_state_id=None, files={path: file_uuid}, wait=true,
  truncate_output_at=8000, preserve_env=false, uid=0, gid=0, max_layer_bytes=None)`.
  Result: `exit_code`, `timed_out`, `state`, `stdout`, `stderr` (with `stdout_truncated`,
  `stderr_truncated`), `result_image`, `filesystem_changed`, `resources`.
- `rsync(source, destination, exclude=[])`: `source` is an absolute directory, file or glob;
  excludes are .gitignore-style globs matched at any depth (`node_modules`, `*.pyc`,
  `build/`). Returns the `directory_state_id`.
- `upload(path | content | content_base64)` → `{uuid, sha256, size}`; pass as
  `run(files={"/abs/path": uuid})`.
- `import_image(registry_url, tag=None, wait=true)`; private registries: `registry_auth`.
- `list_files(image, path)`, `read_file(image, path)`, `grep(image, pattern, ...)`: no sandbox.
- `get_operation`, `list_operations(type="instance"|"image_import")`, `wait_operations`,
  `cancel_operation`.
- Resources: `contree://image/{image}/lineage`, `contree://image/{image}/ls/{path}`,
  `contree://image/{image}/read/{path}`, `contree://operations/instance/{id}`,
  `contree://operations/import/{id}`, `contree://guide/{section}`.
""",
    "quickstart": """\
# Quickstart

```
list_images(tag_prefix="alpine")
import_image(registry_url="docker://alpine:3.20", tag="alpine:3.20")   # if missing
run(command="echo hello && uname -a", image="tag:alpine:3.20")
run(command="apk add git", image="tag:alpine:3.20", disposable=false)  # → result_image
set_tag(image_uuid=<result_image>, tag="alpine-git:3.20")
```
Defaults to remember: `timeout=30` s, output capped at 8000 bytes per stream
(`truncate_output_at`), `disposable=true`, `wait=true`.
""",
    "state": """\
# State and lineage

Images are immutable snapshots. `disposable=false` makes a child image when the filesystem
changed; otherwise `filesystem_changed=false` and `result_image` is the input image.
`contree://image/{uuid}/lineage` shows `parent`, `children`, `ancestors` (nearest first),
`root` and `depth`, each with the command that made it. The server keeps the lineage, so it
covers images made by any client and survives restarts. Roll back by running from an
ancestor; nothing is ever lost until an image is deleted.
""",
    "async": """\
# Async work

`run(..., wait=false)` and `import_image(..., wait=false)` answer `{"operation_id"}` at once.
Then `wait_operations(operation_ids=[...], mode="all"|"any", timeout=300)` follows their event
streams (no polling, no limit on how many). A wait that times out reports `timed_out=true`
and leaves the operations running: wait again or `cancel_operation`. Stopping the MCP server
never cancels work. States: PENDING, ASSIGNED, EXECUTING, SUCCESS, FAILED, CANCELLED.
""",
    "tagging": """\
# Tagging

Tags name images: `{scope}/{purpose}/{base}:{version}` works well, e.g.
`myproj/deps/python:3.11`. Search before building (`list_images(tag_prefix="myproj/")`), tag
right after a `disposable=false` run (`set_tag(image_uuid, tag)`), and remove a tag with
`set_tag(image_uuid, tag=None)`. A tag points at one image; setting it again moves it.
""",
    "errors": """\
# Errors

1. Did the operation complete? `state` FAILED or CANCELLED: read `error` (a limit, a missing
   image, a cancel). `timed_out=true`: the command ran past `timeout` and was killed; its output
   so far is in `stdout`/`stderr` (and a `disposable=false` run kept what it wrote): raise
   `timeout` or make the command finish sooner.
2. Did the command succeed? `exit_code` ≠ 0: read `stderr`.
- Image not found: `list_images`, or `import_image` it.
- Directory state not found (a new server): `rsync` again.
- Output truncated (`stdout_truncated`): raise `truncate_output_at`, or write to a file and
  `read_file` it.
- 403: the token lacks a permission (`whoami` lists them).
""",
}
