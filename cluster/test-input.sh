# Sourced by the cluster tests (netns-hosts.sh, kill-ranks.sh): the token input of their long runs.

# write_input FILE B T: a JSON input of B sequences of T token ids (the demo model's vocabulary is
# 1024), the same ids wherever it is written.
write_input() {
  awk -v b="$2" -v t="$3" 'BEGIN {
    printf "["
    for (s = 0; s < b; s++) {
      printf "%s[", (s ? "," : "")
      for (i = 0; i < t; i++) printf "%s%d", (i ? "," : ""), (s * 131 + i * 7 + 1) % 1024
      printf "]"
    }
    print "]"
  }' >"$1"
}
