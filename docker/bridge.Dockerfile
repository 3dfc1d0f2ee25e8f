# The bridge daemon for one robot: the base install only (JAX sampler, gRPC, spool), no TensorFlow, MuJoCo or
# text encoder; the learner's policy blobs carry the instruction embeddings.
#   docker build -f docker/bridge.Dockerfile -t lwd-bridge .
#   docker run --rm -v /etc/lwd:/etc/lwd -v /var/lib/lwd:/var/lib/lwd lwd-bridge --config=/etc/lwd/robot.toml
# Your hardware adapter (backend = "my_pkg.my_module:MyRobot" in robot.toml) goes in an image built FROM this one.
FROM python:3.11-slim
WORKDIR /opt/lwd
COPY setup.cfg pyproject.toml README.md ./
COPY fleet_api fleet_api
COPY lwd_jax lwd_jax
COPY robot_bridge robot_bridge
COPY experiments experiments
RUN pip install --no-cache-dir '.[bridge]' && rm -rf /opt/lwd/* && cd / && python -m fleet_api.protos \
    && mkdir -p /var/lib/lwd && chown 1000:1000 /var/lib/lwd
ENV JAX_PLATFORMS=cpu \
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
    OMP_NUM_THREADS=1
USER 1000:1000
WORKDIR /var/lib/lwd
ENTRYPOINT ["python", "-m", "robot_bridge.daemon"]
CMD ["--config=/etc/lwd/robot.toml"]
