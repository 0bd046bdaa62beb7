python3 bench/frs_claim.py --out /tmp/claim_out2 --work /tmp/claim2 --gpus 1 --deadline 200 --teacher-epochs 24 --eval-every 12 --plan "b=104,105 b+cl=104,105" --variant cl=train.channels_last=true
