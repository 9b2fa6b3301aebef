-- wrk script: Unleash Edge frontend API evaluation (single feature or all) with the same user.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = os.getenv("EDGE_TOKEN")
wrk.body = '{"userId":"user-4242","properties":{"email":"ada@example.com"}}'
