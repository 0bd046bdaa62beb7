# frs on an official CUDA PyTorch image. Build:  docker build -t frs .
# Run (data and cache mounted from the host; all GPUs):
#   docker run --gpus all --ipc=host -v /data/coco:/data/coco -v /fast/cache:/cache -v $PWD/runs:/runs \
#     frs teacher-cache --pipeline pipelines/coco_retinanet_r50v2_to_r50.toml --out /cache/coco.zarr --set data.root=/data/coco
FROM pytorch/pytorch:2.4.1-cuda12.4-cudnn9-runtime

# Triton (PyTorch's, for frs's fused kernels on the GPU) builds a small launcher with a C compiler on first use;
# the runtime image has none.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/frs
COPY pyproject.toml README.md ./
COPY frs_cli ./frs_cli
COPY pipelines ./pipelines
# torch and torchvision come with the base image; pip keeps them when they satisfy the requirements.
RUN pip install --no-cache-dir . && frs --help > /dev/null

# torchvision keeps downloaded weights here; mount it to reuse them between containers.
ENV TORCH_HOME=/cache/torch
ENTRYPOINT ["frs"]
CMD ["--help"]
