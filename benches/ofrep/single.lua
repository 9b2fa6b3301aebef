-- wrk script: OFREP single-flag evaluation with a context.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("SDK_TOKEN")
wrk.body = '{"context":{"targetingKey":"user-4242","email":"ada@example.com"}}'
