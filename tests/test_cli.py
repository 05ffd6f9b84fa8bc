"""The `mirai` command as a user runs it: demo with no key, serve, and help."""

from __future__ import annotations

import os
import subprocess
import sys

from openai import OpenAI


def mirai(*args: str, **kwargs) -> subprocess.Popen | subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "MIRAI_BASE_URL")}
    env["MIRAI_STREAM"] = "1"
    cmd = [sys.executable, "-m", "mirai_magics.cli", *args]
    if kwargs.pop("background", False):
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_demo_runs_offline_with_a_streamed_and_a_retried_call():
    result = mirai("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "the offline server (no API key set)" in out
    assert "[mirai] main/gpt-4o-mini" in out and "offline" in out
    assert "retried ×2 (500, 429)" in out and '"attempts": 3' in out


def test_serve_answers_the_sdk_until_stopped():
    proc = mirai("serve", "--port", "0", "--fail-429", "0", background=True)
    try:
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        url = line.split("listening on ")[1].split()[0]
        client = OpenAI(base_url=url, api_key="sk-test-cli-0000000000", max_retries=0)
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert "offline" in reply.choices[0].message.content.lower()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_no_command_prints_help_and_fails():
    result = mirai()
    assert result.returncode == 2 and "check-config" in result.stdout
