"""The tokenizer: nginx's rules for words, quotes, escapes, comments and variables."""

from __future__ import annotations

import pytest

from gateway.nginx.lexer import WORD, NginxSyntaxError, tokenize


def words(text: str) -> list[str]:
    return [token.value if token.kind == WORD else token.kind for token in tokenize(text, "t")]


def test_words_separators_and_blocks() -> None:
    assert words("listen 443 ssl;\nserver{a b;}") == [
        "listen", "443", "ssl", ";", "server", "{", "a", "b", ";", "}",
    ]  # fmt: skip


def test_quotes_keep_spaces_and_may_be_empty() -> None:
    assert words("""add_header X "a b" 'c d' "" '';""") == [
        "add_header",
        "X",
        "a b",
        "c d",
        "",
        "",
        ";",
    ]


def test_escapes_as_nginx_processes_them() -> None:
    tokens = list(tokenize(r'x "a \"b\" \\ c\td\q" it\'s;', "t"))
    assert [t.value for t in tokens[:3]] == ["x", 'a "b" \\ c\td\\q', "it's"]
    assert tokens[1].quoted
    assert not tokens[2].quoted


def test_comments_only_where_a_word_starts() -> None:
    assert words("a#b c; # a comment ; {\nd;") == ["a#b", "c", ";", "d", ";"]
    assert words('x "# not a comment";') == ["x", "# not a comment", ";"]


def test_variables_keep_their_braces() -> None:
    assert words("set $a ${host}x;") == ["set", "$a", "${host}x", ";"]


def test_closing_brace_does_not_end_a_word() -> None:
    # As in nginx: "}" is only a token where a word could start.
    assert words("a b}") == ["a", "b}"]


def test_if_condition_with_quoted_string_and_parenthesis() -> None:
    assert words('if ($scheme != "https") {') == ["if", "($scheme", "!=", "https", ")", "{"]


def test_positions_are_line_and_column_of_the_word() -> None:
    tokens = list(tokenize("http {\n    listen  443;\n}", "t"))
    assert [(t.value, t.line, t.column) for t in tokens] == [
        ("http", 1, 1), ("{", 1, 6), ("listen", 2, 5), ("443", 2, 13), (";", 2, 16), ("}", 3, 1),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ('server {\n  add_header X "abc;\n}\n', 2, 16, 'unterminated "-quoted string'),
        ("map $a $b { '' close; default 'x; }", 1, 31, "unterminated '-quoted string"),
        ('server_name "a"b;', 1, 16, "unexpected 'b' after a quoted string"),
    ],
)
def test_malformed_quotes(text: str, line: int, column: int, message: str) -> None:
    with pytest.raises(NginxSyntaxError) as caught:
        list(tokenize(text, "bad.conf"))
    error = caught.value
    assert (error.file, error.line, error.column, error.message) == (
        "bad.conf",
        line,
        column,
        message,
    )
    assert str(error).startswith(f"bad.conf:{line}:{column}: ")
