"""The OpenAI-compatible server (`alignlab serve`, docs/serve.md).

- `protocol`: request bodies parsed and checked, errors in OpenAI's shape;
- `security`: API keys and the body limit;
- `scheduler`: continuous batching, one decode thread per model;
- `engine`: a served model (loading, prompts to token ids, the blocking sampler strategies use);
- `strategies`: in-context strategy stacks behind the API;
- `app`: the FastAPI routes and the OpenAI reply shapes;
- `cli`: `alignlab serve`.

Nothing here is imported by `import alignlab`: fastapi is an optional dependency.
"""
