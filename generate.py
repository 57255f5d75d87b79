"""Generate images with the samplers of "Elucidating the Design Space of Diffusion-Based
Generative Models" (Karras et al., 2022), one PNG per seed, identical to NVlabs/edm's
generate.py for the same network, seeds and options. The samplers live in training/sampling.py;
this file is the command line."""

import os

import click
import numpy as np
import PIL.Image
import torch
import tqdm

import dnnlib
from torch_utils import distributed as dist
from training.sampling import check_sigma_range, parse_int_list, sample_batch, split_seeds, to_uint8
from training.images import save_image, save_image_grid
from edm_spectral.cli import load_snapshot_option, sampler_options

#----------------------------------------------------------------------------
# Where the CLI writes the image of a seed.

def image_path(outdir, seed, subdirs=False):
    seed = int(seed)
    image_dir = os.path.join(outdir, f'{seed - seed % 1000:06d}') if subdirs else outdir
    return os.path.join(image_dir, f'{seed:06d}.png')

#----------------------------------------------------------------------------
# Load the network on every rank, rank 0 first (it fills the download cache for URLs).

def _load_network(network_pkl, device, trust_code):
    dist.print0(f'Loading network from "{network_pkl}"...')
    return load_snapshot_option(network_pkl, '--network', trust_code=trust_code, device=device)['ema']

#----------------------------------------------------------------------------

@click.command()

# Main options.
@click.option('--network', 'network_pkl',  help='Network snapshot (pickle path or URL)', metavar='PATH|URL',          type=str, required=True)
@click.option('--outdir',                  help='Folder for the PNGs', metavar='DIR',                                 type=str, required=True)
@click.option('--seeds',                   help='One image per seed (e.g. 0-63,100)', metavar='LIST',                type=parse_int_list, default='0-63', show_default=True)
@click.option('--subdirs',                 help='Group the PNGs in one folder per 1000 seeds',                       is_flag=True)
@click.option('--class', 'class_idx',      help='Class of every image (conditional nets)  [default: random]', metavar='INT', type=click.IntRange(min=0), default=None)
@click.option('--batch', 'max_batch_size', help='Images per batch and process', metavar='INT',                       type=click.IntRange(min=1), default=64, show_default=True)

# Sampler and ablation options (any ablation option selects the generalized ablation sampler).
@sampler_options

# Our additions.
@click.option('--device',                  help='Device  [default: cuda if available, else cpu]', metavar='STR',   type=str, default=None)
@click.option('--grid',                    help='Also save all images as one PNG grid', metavar='PNG',              type=str, default=None)
@click.option('--trust-code', 'trust_code', help='Load the pickle with plain pickle.load, executing the code stored in it (only for files you trust; needed for networks our classes cannot rebuild). Default: safe weights-only loading', is_flag=True)

def main(network_pkl, outdir, seeds, subdirs, class_idx, max_batch_size, device, grid, trust_code, **sampler_kwargs):
    """Sample images from an EDM-style diffusion network, one PNG per seed.

    Without ablation options this is the EDM sampler (Heun, rho-spaced steps, optional churn);
    --solver, --disc, --schedule or --scaling switch to the generalized sampler of the paper's
    Section 3. Each image depends only on its seed, the network, the options and the device
    type: not on --batch or the number of processes. The network is rebuilt from the weights
    in the pickle without running code stored in it; --trust-code uses plain pickle instead.

    Examples:

    \b
    # CIFAR-10 with the released conditional DDPM++ model: 64 PNGs in out/
    python generate.py --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl \\
        --outdir=out --seeds=0-63

    \b
    # 50k images for FID on 4 GPUs, in folders of 1000
    torchrun --standalone --nproc_per_node=4 generate.py --network=NET.pkl --outdir=fid-imgs \\
        --seeds=0-49999 --subdirs

    \b
    # Deterministic DDIM-style sampling (Euler, VP discretization and schedule) on the CPU, plus a grid
    python generate.py --outdir=out --seeds=0-15 --steps=50 --solver=euler --disc=vp \\
        --schedule=vp --scaling=vp --device=cpu --grid=out/grid.png --network=network-snapshot.pkl
    """
    try:
        device = dist.init(device)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint='--device') from e
    if len(seeds) == 0:
        raise click.BadParameter('no seeds given', param_hint='--seeds')
    try:
        check_sigma_range(**sampler_kwargs)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--sigma_min' / '--sigma_max'") from e
    try:
        dnnlib.util.check_writable_dir(outdir, '--outdir')
        if grid is not None:
            dnnlib.util.check_writable_file(grid, '--grid')
    except dnnlib.util.UnwritablePathError as e:
        raise click.ClickException(str(e)) from e
    rank_batches = split_seeds(seeds, max_batch_size, dist.get_rank(), dist.get_world_size())

    net = _load_network(network_pkl, device, trust_code)
    if class_idx is not None and not class_idx < net.label_dim:
        raise click.BadParameter(f'{class_idx} is not a class of this network ' + (f'(it has {net.label_dim} classes)'
            if net.label_dim else '(it is unconditional; leave out --class)'), param_hint='--class')

    # Loop over this rank's batches; every rank runs the same number of iterations.
    dist.print0(f'Generating {len(seeds)} images to "{outdir}"...')
    for batch_seeds in tqdm.tqdm(rank_batches, unit='batch', disable=(dist.get_rank() != 0)):
        dist.barrier()
        if len(batch_seeds) == 0:
            continue
        with torch.no_grad():
            images = to_uint8(sample_batch(net, batch_seeds, device, class_idx=class_idx, **sampler_kwargs)).cpu()
        for seed, image in zip(batch_seeds.tolist(), images):
            save_image(image, image_path(outdir, seed, subdirs))

    # All images exist once every rank is here; rank 0 reads them back for the grid.
    dist.barrier()
    if grid is not None and dist.get_rank() == 0:
        images = [np.asarray(PIL.Image.open(image_path(outdir, seed, subdirs))) for seed in seeds]
        images = np.stack([x[:, :, None] if x.ndim == 2 else x for x in images]).transpose(0, 3, 1, 2)
        save_image_grid(images, grid)
        dist.print0(f'Saved grid of {len(seeds)} images to "{grid}"')
    dist.print0('Done.')
    dist.shutdown()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
