"""The example product starts and serves its datasets."""

from fastapi.testclient import TestClient

from tests.conftest import TokenFactory


def test_example_serves_its_datasets(client: TestClient, token: TokenFactory) -> None:
    names = [d["name"] for d in client.get("/discovery").json()["datasets"]]
    assert names == ["customer_revenue", "daily_sales"]
    response = client.get("/output/datasets/daily_sales?limit=5", headers=token("output:read"))
    assert response.status_code == 200
    assert response.json()["count"] == 5
