"""Stage 4: the page's actions refuse a browser that calls the server by a name not its own.

DNS rebinding: a site points its own name at this server's address; its page is then
same-origin with itself, and its requests' Origin matches their Host. The Host is the tell
(jobkit.dashboard.same_site_only)."""

import pytest

pytestmark = pytest.mark.since_stage(4)

REBOUND = {
    "Host": "evil.example:8000",
    "Origin": "http://evil.example:8000",
    "Sec-Fetch-Site": "same-origin",
}
OURS = {
    "Host": "127.0.0.1:8000",
    "Origin": "http://127.0.0.1:8000",
    "Sec-Fetch-Site": "same-origin",
}


@pytest.mark.parametrize(("method", "path"), [("DELETE", "/jobs/x"), ("POST", "/jobs/x/retry")])
def test_a_rebound_names_page_is_refused_and_curl_and_our_own_page_are_not(client, method, path):
    refused = client.request(method, path, headers=REBOUND)
    assert refused.status_code == 403
    assert "evil.example is not one of this server's names" in refused.json()["detail"]
    assert client.request(method, path).status_code == 404  # curl: no Origin; x is not on record
    assert client.request(method, path, headers=OURS).status_code == 404
