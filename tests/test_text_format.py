"""The text of an example (docs/design.md) for every record schema, and its error messages."""

import pytest

from configuration_airrep import AirRepConfig, RecordFormatError, format_text, split_record


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            {"instruction": "Add the numbers.", "input": "2 3", "output": "5", "task": "add"},
            "Question: Add the numbers. 2 3\nAnswer: 5",
        ),
        ({"instruction": "Name a colour.", "input": "", "output": "red"}, "Question: Name a colour.\nAnswer: red"),
        ({"instruction": "Name a colour.", "output": "red"}, "Question: Name a colour.\nAnswer: red"),
        ({"instruction": "Name a colour.", "input": None, "output": "red"}, "Question: Name a colour.\nAnswer: red"),
        ({"inputs": "Translate 'chat'.", "targets": "cat"}, "Question: Translate 'chat'.\nAnswer: cat"),
        ({"prompt": "2+2?", "response": "4"}, "Question: 2+2?\nAnswer: 4"),
        ({"prompt": "2+2?", "completion": "4"}, "Question: 2+2?\nAnswer: 4"),
        (
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Capital of France?"},
                    {"role": "assistant", "content": "Paris"},
                    {"role": "user", "content": "Thanks"},
                ]
            },
            "Question: Be brief. Capital of France?\nAnswer: Paris",
        ),
        ({"data": ["Capital of Italy?", "Rome"]}, "Question: Capital of Italy?\nAnswer: Rome"),
        ({"data": ["", "Rome"]}, "Question: \nAnswer: Rome"),
        ({"text": "A plain document."}, "A plain document."),
        ("Already formatted text.", "Already formatted text."),
    ],
)
def test_every_schema_renders_the_template(record, expected):
    assert format_text(record) == expected


def test_chat_prompt_is_the_turns_before_the_last_assistant_turn():
    record = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ]
    }
    assert split_record(record) == ("a\nb\nc", "d")


def test_prompt_is_cut_to_256_words_and_response_kept_whole():
    prompt = " ".join(f"w{i}" for i in range(300))
    response = " ".join(f"r{i}" for i in range(300))
    text = format_text({"prompt": prompt, "response": response})
    head, answer = text.split("\nAnswer: ")
    assert head.removeprefix("Question: ").split() == [f"w{i}" for i in range(256)]
    assert answer == response


def test_a_data_pair_prompt_is_cut_to_100_words_as_the_authors_formatter_does():
    prompt = " ".join(f"w{i}" for i in range(300))
    head, answer = format_text({"data": [prompt, "ok"]}).split("\nAnswer: ")
    assert head.removeprefix("Question: ").split() == [f"w{i}" for i in range(100)] and answer == "ok"
    with pytest.raises(RecordFormatError, match=r"record 4: field 'data' must be a \[prompt, response\] pair"):
        format_text({"data": ["only one"]}, index=4)
    with pytest.raises(RecordFormatError, match="the response in field 'data' is empty"):
        format_text({"data": ["p", " "]})


def test_config_template_is_used():
    config = AirRepConfig(text_template="Q={prompt}|A={response}", max_prompt_words=2)
    assert config.format_text({"prompt": "one two three", "response": "x"}) == "Q=one two|A=x"


def test_template_without_placeholders_is_rejected():
    with pytest.raises(ValueError, match="response"):
        AirRepConfig(text_template="Question: {prompt}")


def test_unknown_schema_names_the_record_and_its_keys():
    with pytest.raises(
        RecordFormatError, match=r"record 7 matches no known schema; its keys are \['answer', 'question'\]"
    ):
        format_text({"question": "q", "answer": "a"}, index=7)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "q", "response": 5}, r"record 3: field 'response' must be a string, got int"),
        ({"instruction": ["x"], "output": "y"}, r"record 3: field 'instruction' must be a string, got list"),
        ({"prompt": "q", "response": "   "}, r"record 3: field 'response' is empty"),
        ({"text": ""}, r"record 3: field 'text' is empty"),
        ("", r"record 3: the text is empty"),
        (42, r"record 3: expected a string or a mapping, got int"),
        ({"messages": []}, r"record 3: field 'messages' must be a non-empty list"),
        ({"messages": [{"role": "user", "content": "hi"}]}, r"record 3: field 'messages' has no assistant turn"),
        ({"messages": [{"role": "user"}]}, r"record 3: messages\[0\] must be a mapping with 'role' and 'content'"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 1}]},
            r"record 3: messages\[1\]\['content'\] must be a string, got int",
        ),
    ],
)
def test_bad_fields_are_named(record, message):
    with pytest.raises(RecordFormatError, match=message):
        format_text(record, index=3)
