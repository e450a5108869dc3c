"""State in the URL (pages/_ui/url_state.bind), run by Streamlit's AppTest: the browser sends its URL with each
rerun, sometimes one write behind; a value the page wrote itself and gets back late is not a link."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest


def threshold_page():
    import streamlit as st

    from pages._ui.url_state import bind, dump_float, forget_cleared, parse_float

    forget_cleared()
    value = st.slider("Threshold", 0.0, 1.0, 0.5, step=0.01,
                      key=bind("threshold", "threshold", 0.5, parse=parse_float, dump=dump_float))
    st.markdown(f"value {value:.2f}")


def shown(at: AppTest) -> str:
    return at.markdown[0].value


def test_a_late_url_does_not_undo_the_widget_and_a_new_link_still_counts():
    at = AppTest.from_function(threshold_page).run()
    assert shown(at) == "value 0.50" and "threshold" not in at.query_params
    for value in (0.49, 0.48):
        at.slider[0].set_value(value).run()
    assert at.query_params["threshold"] == "0.48"

    at.query_params["threshold"] = "0.49"  # the browser had not applied the last run's write yet
    at.slider[0].set_value(0.47).run()
    assert shown(at) == "value 0.47" and at.query_params["threshold"] == "0.47"
    at.query_params["threshold"] = "0.48"  # and a rerun asked by something else, still behind
    at.run()
    assert shown(at) == "value 0.47" and at.query_params["threshold"] == "0.47"

    at.slider[0].set_value(0.5).run()  # back to the default: the parameter leaves the URL
    assert "threshold" not in at.query_params
    at.query_params["threshold"] = "0.47"  # the removal not applied yet
    at.run()
    assert shown(at) == "value 0.50" and "threshold" not in at.query_params

    at.query_params["threshold"] = "0.3"  # a value this page never wrote: a link, taken
    at.run()
    assert shown(at) == "value 0.30" and at.query_params["threshold"] == "0.3"
