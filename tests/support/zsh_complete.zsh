# Real zsh completion, driven in a pseudo-terminal (test-only).
#   zsh -f zsh_complete.zsh COMPLETION_DIR 'COMMAND LINE' OUT_FILE
# Starts an interactive zsh with compinit over COMPLETION_DIR, types the
# command line and a TAB, and writes every match the completion system
# offered (each compadd call's matches, one call per line) to OUT_FILE.
zmodload zsh/zpty || exit 3
zpty z zsh -f -i
zpty -w z "PS1=''; fpath=($1 \$fpath); autoload -Uz compinit; compinit -u -D"
zpty -w z 'compadd() { local -a m; builtin compadd -A m "$@"; (( $#m )) && print -r -- ${(j: :)m} >> $ZC_OUT; builtin compadd "$@"; }'
zpty -w z "ZC_OUT=${(q)3}; print -r -- '<''ready>'"
read_until() {
  local line n=0
  while (( n++ < 400 )); do
    if zpty -r -t z line; then [[ $line == *"$1"* ]] && return 0; else sleep 0.05; fi
  done
  return 1
}
read_until '<ready>' || exit 4
zpty -w -n z "$2"$'\t'
zpty -w z $'\C-u'"print -r -- '<''done>'"
read_until '<done>' || exit 5
zpty -d z
