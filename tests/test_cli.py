"""``python -m fla_compile explain | bench``, run in-process through ``cli.main(argv)`` on tiny CPU shapes."""

import json
import textwrap

from fla_compile.__main__ import main

NAIVE = textwrap.dedent(
    '''
    import torch


    def naive_gla(q, k, v, gk):
        """A GLA time loop over [B, T, H, D] inputs."""
        B, T, H, K = q.shape
        S = q.new_zeros(B, H, K, v.shape[-1])
        outs = []
        for t in range(T):
            S = S * gk[:, t].exp()[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
            outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
        return torch.stack(outs, 1)


    def softmax_attention(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2), -1) @ v


    def takes_a_string(name):
        return name.upper()


    class Retention(torch.nn.Module):
        def __init__(self, dim=12, heads=3):
            super().__init__()
            self.qkv = torch.nn.Linear(dim, 3 * dim)
            self.heads = heads

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).unbind(2)
            S = q.new_zeros(B, self.heads, C // self.heads, C // self.heads)
            outs = []
            for t in range(T):
                S = 0.9 * S + k[:, t, :, :, None] * v[:, t, :, None, :]
                outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
            return torch.stack(outs, 1).reshape(B, T, C)

        @staticmethod
        def example_inputs(B, T, dtype):
            return (torch.randn(B, T, 12, dtype=dtype),)
    '''
)


def write(tmp_path):
    path = tmp_path / "layers.py"
    path.write_text(NAIVE)
    return str(path)


def test_explain_naive_gla_loop(tmp_path, capsys):
    assert main(["explain", f"{write(tmp_path)}:naive_gla", "--shape", "1,6,2,4"]) == 0
    out = capsys.readouterr().out
    assert "gla" in out and "1 matched" in out
    assert "gk[1,6,2,4]" in out  # the gate was recognized by name


def test_explain_module_class_with_example_inputs_json(tmp_path, capsys):
    assert main(["explain", f"{write(tmp_path)}:Retention", "--shape", "1,6,2,4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["matched"] and [m["family"] for m in report["matches"]] == ["retention"]
    assert "example_inputs" in report["inputs"]


def test_explain_no_recurrence_exits_1(tmp_path, capsys):
    assert main(["explain", f"{write(tmp_path)}:softmax_attention", "--shape", "1,6,2,4"]) == 1
    assert "no linear-attention region matched" in capsys.readouterr().out


def test_explain_usage_errors_exit_2(tmp_path, capsys):
    path = write(tmp_path)
    cases = [
        (["explain", "no_colon"], "TARGET must be path/to/file.py:name or package.module:name"),
        (["explain", f"{tmp_path}/missing.py:f"], "no such file"),
        (["explain", f"{path}:nothing_here"], "has no 'nothing_here'"),
        (["explain", "fla_compile.no_such_module:f"], "cannot import module"),
        (["explain", f"{path}:takes_a_string", "--shape", "1,6,2,4"], "cannot build inputs for takes_a_string"),
        (["explain", f"{path}:Retention", "--init", '{"width": 3}'], "constructing Retention"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert main(["explain", "x:y", "--shape", "1,2"]) == 2  # argparse's own usage error
    assert "B,T,H,D" in capsys.readouterr().err


def test_help_for_each_command(capsys):
    for argv in (["--help"], ["explain", "--help"], ["bench", "--help"]):
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "example_inputs" in out and "--backward" in out


def test_bench_linear_attn_prints_a_table(capsys):
    argv = ["bench", "--family", "linear_attn", "--shape", "1,16,2,8", "--device", "cpu", "--reps", "1", "--backward"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| family | ours (ms) | reference (ms) |" in out
    row = next(line for line in out.splitlines() if line.startswith("| linear_attn |"))
    assert float(row.split("|")[-2]) < 1e-5  # rel err vs the float64 reference, output and grads
