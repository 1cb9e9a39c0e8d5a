export BEFORE=1
exit 7
