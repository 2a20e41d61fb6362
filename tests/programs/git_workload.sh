# A git workload in the current (empty) directory: commits, branches, a merge, diff, log, gc.
set -euo pipefail
git init -q -b main repo && cd repo
for i in $(seq 1 40); do
  seq 1 $((i * 50)) | sed "s/^/file $i line /" > "f$i.txt"
done
git add . && git commit -qm "first"
git checkout -qb topic
for i in $(seq 1 40 | sed -n '1~3p'); do echo "topic change $i" >> "f$i.txt"; done
git commit -qam "topic"
git checkout -q main
for i in 2 5 8; do sed -i '1s/^/main change\n/' "f$i.txt"; done
git commit -qam "main"
git merge -q --no-edit topic
git log --format='%H %s' --stat | head -200
git diff HEAD~2 --stat
git gc -q
git fsck --no-progress
git rev-parse HEAD 'HEAD^{tree}'
